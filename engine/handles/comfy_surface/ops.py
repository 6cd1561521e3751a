"""ComfyUI's layer operations (comfy.ops) for custom packs.

``disable_weight_init`` holds torch layers that skip their random initialisation (the weights are about
to be loaded) and, when ``comfy_cast_weights`` is set or weight/bias functions are attached, compute with
their weights cast to the input's dtype and device (``forward_comfy_cast_weights``); ``manual_cast`` is the
same set with casting always on. Packs subclass these (quantized-weight layers override
``forward_comfy_cast_weights`` / ``cast_bias_weight``) and build their own modules from them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

scaled_dot_product_attention = F.scaled_dot_product_attention


def cast_to(
    weight: torch.Tensor | None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    non_blocking: bool = False,
    copy: bool = False,
    stream: Any = None,
) -> torch.Tensor | None:
    if weight is None:
        return None
    return weight.to(device=device, dtype=dtype, non_blocking=non_blocking, copy=copy)


def cast_to_input(
    weight: torch.Tensor, input: torch.Tensor, non_blocking: bool = False, copy: bool = True
) -> torch.Tensor:
    return weight.to(device=input.device, dtype=input.dtype, non_blocking=non_blocking, copy=copy)


def cast_bias_weight(
    s: Any,
    input: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    bias_dtype: torch.dtype | None = None,
    offloadable: bool = False,
) -> tuple[Any, ...]:
    """(weight, bias) of layer ``s`` on ``input``'s device in ``input``'s dtype (unless given), with the
    layer's ``weight_function`` / ``bias_function`` lists applied; a third None (no offload stream) when
    ``offloadable``."""
    if input is not None:
        if dtype is None:
            dtype = input.dtype if input.is_floating_point() else getattr(s.weight, "dtype", None)
        if bias_dtype is None:
            bias_dtype = dtype
        if device is None:
            device = input.device
    bias = None
    if getattr(s, "bias", None) is not None:
        bias = cast_to(s.bias, bias_dtype, device)
        for fn in getattr(s, "bias_function", ()):
            bias = fn(bias)
    weight = cast_to(s.weight, dtype, device)
    for fn in getattr(s, "weight_function", ()):
        weight = fn(weight)
    return (weight, bias, None) if offloadable else (weight, bias)


def uncast_bias_weight(s: Any, weight: Any, bias: Any, offload_stream: Any = None) -> None:
    """Nothing to release: diffgraph casts without offload streams."""


class CastWeightBiasOp:
    comfy_cast_weights = False
    weight_function: list[Callable[..., Any]] = []
    bias_function: list[Callable[..., Any]] = []


def _op(base: type, compute: Callable[..., torch.Tensor]) -> type:
    def reset_parameters(self: Any) -> None:
        return None

    def forward_comfy_cast_weights(self: Any, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        weight, bias = cast_bias_weight(self, input)
        return compute(self, input, weight, bias, *args, **kwargs)

    def forward(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.comfy_cast_weights or self.weight_function or self.bias_function:
            return self.forward_comfy_cast_weights(*args, **kwargs)
        return base.forward(self, *args, **kwargs)  # type: ignore[attr-defined,no-any-return]

    body = {
        "reset_parameters": reset_parameters,
        "forward_comfy_cast_weights": forward_comfy_cast_weights,
        "forward": forward,
    }
    return type(base.__name__, (base, CastWeightBiasOp), body)


def _conv(self: Any, x: torch.Tensor, w: torch.Tensor, b: Any) -> torch.Tensor:
    return self._conv_forward(x, w, b)  # type: ignore[no-any-return]


def _conv_transpose(fn: Callable[..., torch.Tensor], dims: int) -> Callable[..., torch.Tensor]:
    def compute(self: Any, x: torch.Tensor, w: torch.Tensor, b: Any, output_size: Any = None) -> torch.Tensor:
        pad = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, dims, self.dilation
        )
        return fn(x, w, b, self.stride, self.padding, pad, self.groups, self.dilation)

    return compute


def _embedding(self: Any, x: torch.Tensor, w: torch.Tensor, b: Any, out_dtype: Any = None) -> torch.Tensor:
    out = F.embedding(
        x, w, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
    )
    return out if out_dtype is None else out.to(out_dtype)


class disable_weight_init:  # noqa: N801 - ComfyUI's name
    Linear = _op(torch.nn.Linear, lambda self, x, w, b: F.linear(x, w, b))
    Conv1d = _op(torch.nn.Conv1d, _conv)
    Conv2d = _op(torch.nn.Conv2d, _conv)
    Conv3d = _op(torch.nn.Conv3d, _conv)
    GroupNorm = _op(
        torch.nn.GroupNorm, lambda self, x, w, b: F.group_norm(x, self.num_groups, w, b, self.eps)
    )
    LayerNorm = _op(
        torch.nn.LayerNorm, lambda self, x, w, b: F.layer_norm(x, self.normalized_shape, w, b, self.eps)
    )
    RMSNorm = _op(torch.nn.RMSNorm, lambda self, x, w, b: F.rms_norm(x, self.normalized_shape, w, self.eps))
    ConvTranspose1d = _op(torch.nn.ConvTranspose1d, _conv_transpose(F.conv_transpose1d, 1))
    ConvTranspose2d = _op(torch.nn.ConvTranspose2d, _conv_transpose(F.conv_transpose2d, 2))
    Embedding = _op(torch.nn.Embedding, _embedding)

    @classmethod
    def conv_nd(cls, dims: int, *args: Any, **kwargs: Any) -> torch.nn.Module:
        layer = {1: cls.Conv1d, 2: cls.Conv2d, 3: cls.Conv3d}.get(dims)
        if layer is None:
            raise ValueError(f"unsupported dimensions: {dims}")
        return layer(*args, **kwargs)  # type: ignore[no-any-return]


def _casting(name: str, base: type) -> type:
    """``base``'s layers as subclasses with casting always on."""
    layers = {
        attr: type(attr, (getattr(base, attr),), {"comfy_cast_weights": True})
        for attr in ("Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm", "RMSNorm")
        + ("ConvTranspose1d", "ConvTranspose2d", "Embedding")
    }
    return type(name, (base,), layers)


manual_cast = _casting("manual_cast", disable_weight_init)
fp8_ops = manual_cast


def scaled_fp8_ops(
    fp8_matrix_mult: bool = False, scale_input: bool = False, override_dtype: Any = None
) -> type:
    return manual_cast


def pick_operations(
    weight_dtype: Any,
    compute_dtype: Any,
    load_device: Any = None,
    disable_fast_fp8: bool = False,
    fp8_optimizations: bool = False,
    scaled_fp8: Any = None,
) -> type:
    if compute_dtype is None or weight_dtype == compute_dtype:
        return disable_weight_init
    return manual_cast


def _linear_args(m: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (m.in_features, m.out_features), {"bias": m.bias is not None}


def _conv_args(m: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    kw = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
    return (m.in_channels, m.out_channels, m.kernel_size), {**kw, "bias": m.bias is not None}


def _group_norm_args(m: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (m.num_groups, m.num_channels), {"eps": m.eps, "affine": m.affine}


def _layer_norm_args(m: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (m.normalized_shape,), {"eps": m.eps, "elementwise_affine": m.elementwise_affine}


# torch layer -> (the operations attribute that replaces it, its constructor arguments)
_SWAPS: dict[type, tuple[str, Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]]]] = {
    torch.nn.Linear: ("Linear", _linear_args),
    torch.nn.Conv2d: ("Conv2d", _conv_args),
    torch.nn.GroupNorm: ("GroupNorm", _group_norm_args),
    torch.nn.LayerNorm: ("LayerNorm", _layer_norm_args),
}


def use_operations(module: torch.nn.Module, operations: Any, *, device: Any = "meta") -> torch.nn.Module:
    """Replace ``module``'s plain torch layers by ``operations``' classes of the same shape (ComfyUI's
    ``custom_operations``: e.g. ComfyUI-GGUF's layers that dequantize their weights in forward), built on
    ``device`` (meta: the weights are to be assigned from a state dict). Returns ``module``."""
    for name, child in list(module.named_children()):
        swap = _SWAPS.get(type(child))
        layer = getattr(operations, swap[0], None) if swap is not None else None
        if swap is not None and layer is not None:
            args, kw = swap[1](child)
            setattr(module, name, layer(*args, **kw, device=device))
        else:
            use_operations(child, operations, device=device)
    return module
