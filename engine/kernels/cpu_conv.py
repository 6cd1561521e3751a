"""fp32 CPU convolutions with their weights kept in oneDNN's own (blocked) layout between calls.

torch's CPU convolution already runs in oneDNN, but it is handed the weight in PyTorch's (O, I, kH, kW)
layout and reorders it into oneDNN's blocked layout on every call. For the deep layers of a diffusion UNet
(1280 x 1280 x 3 x 3 weights, 59 MB, applied to 8x8 or 4x4 latents) that reorder costs several times
the convolution itself: measured on this project's 2-core CPU, a 1280-channel 3x3 conv on a 2 x 8 x 8
input takes 28 ms with torch's call and 8.6 ms with the weight reordered once (SD1.5 UNet step at
256 px: 1.86 -> 0.96 s; at 512 px 5.1 -> 4.4 s, where the large layers are compute-bound).

The reordered ("packed") weight is a cache on the layer: a second copy of the conv weights (SD1.5's UNet:
2.4 GB in fp32) that lives while the model is used and is released when the model manager offloads or
drops it (`release`). It is rebuilt on the next call after the weight changes: a new tensor, new storage
under the same Parameter (the weight patcher's ``param.data = patched``) or an in-place write that bumps
the version counter. A write through ``param.data.copy_`` is invisible to torch's version counter, so the
engine's own writers (the weight patcher, the compat layer's ``copy_to_param``) copy into the parameter
itself under ``torch.no_grad()``, and the weight patcher also drops the caches whenever it changes the
weights. ``DIFFGRAPH_CPU_CONV_PACK=0`` turns the cache off (torch's call, no extra memory).

Packed calls: inference only (plain fp32 CPU tensors, no gradient wanted, zero padding given as numbers,
not while torch.compile traces). Training keeps torch's convolution: a packed forward for LoRA training
(frozen weights; input gradient from torch's convolution backward) measured no faster per step on the
full SD1.5 UNet (3.29 vs 3.21 s, benchmarks/lora_train.py) and held 1.5x the peak memory. Everything else
is torch's ``Conv2d.forward`` unchanged.
"""

from __future__ import annotations

import os
import weakref

import torch
from torch import nn

from engine.kernels.cpu_gemm import plain_fp32_cpu

ENV_VAR = "DIFFGRAPH_CPU_CONV_PACK"
# In layer.__dict__: (weak ref to the weight, (storage pointer, version, input shape), packed weight).
_CACHE_ATTR = "_diffgraph_packed_weight"


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip() not in ("0", "false", "no", "off") and available()


def eligible(layer: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether `conv2d` applies: plain fp32 CPU tensors, zero padding given as numbers, no gradient wanted
    (training keeps torch's convolution: see the module docstring)."""
    return (
        plain_fp32_cpu(x)
        and plain_fp32_cpu(layer.weight)
        and plain_fp32_cpu(layer.bias)
        and x.dim() == 4
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
        and not (
            torch.is_grad_enabled()
            and (x.requires_grad or any(p.requires_grad for p in layer.parameters(recurse=False)))
        )
        and not torch.compiler.is_compiling()
        and enabled()
    )


def packed_weight(layer: nn.Conv2d, input_shape: tuple[int, ...]) -> torch.Tensor:
    """The layer's weight in oneDNN's layout for inputs of `input_shape`, reordered again only when the
    weight tensor or the input shape changed (oneDNN picks the blocked layout for the shape: packed
    without it, convolutions on small inputs ran up to 30x slower)."""
    weight = layer.weight
    # The tensor, its storage and its version: `param.data = other` (the weight patcher's swap) keeps the
    # Parameter but changes the storage; an in-place write (`param.copy_` under no_grad) bumps the version.
    # Inference tensors (weights made under torch.inference_mode) have no version counter; they cannot be
    # written outside inference mode, and the engine's patcher replaces their storage (seen by the pointer).
    version = 0 if weight.is_inference() else weight._version
    key = (weight.data_ptr(), version, input_shape)
    cached = layer.__dict__.get(_CACHE_ATTR)
    if cached is not None and cached[0]() is weight and cached[1] == key:
        return cached[2]
    layer.__dict__.pop(_CACHE_ATTR, None)  # the stale copy goes before the new one is made
    packed = torch.ops.mkldnn._reorder_convolution_weight(
        weight.detach(),
        list(layer.padding),
        list(layer.stride),
        list(layer.dilation),
        layer.groups,
        list(input_shape),
    )
    layer.__dict__[_CACHE_ATTR] = (weakref.ref(weight), key, packed)
    return packed


def _packed_forward(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x,
        packed_weight(layer, tuple(x.shape)),
        layer.bias,
        list(layer.padding),
        list(layer.stride),
        list(layer.dilation),
        layer.groups,
        "none",
        [],
        "",
    )


def conv2d(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's convolution of `x` with its packed weight (call only where `eligible`)."""
    return _packed_forward(layer, x)


def release(model: nn.Module) -> int:
    """Drop the packed copies under `model`; returns the bytes they held."""
    freed = 0
    for module in model.modules():
        cached = module.__dict__.pop(_CACHE_ATTR, None)
        if cached is not None:
            freed += cached[2].numel() * cached[2].element_size()
    return freed


def packed_bytes(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        cached = module.__dict__.get(_CACHE_ATTR)
        if cached is not None:
            total += cached[2].numel() * cached[2].element_size()
    return total
