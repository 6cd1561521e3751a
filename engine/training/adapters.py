"""Trainable low-rank adapters hooked onto a frozen UNet's Linear and Conv2d layers.

An adapter adds ``delta(x)`` to its layer's output through a forward hook, so the base weights stay
untouched (frozen, shared with other clones of the model) and removing the hooks restores the exact
original computation. Kinds:

- LoRA (Hu et al. 2021, "LoRA", eq. 3): ``y = W x + (alpha / r) · up(down(x))``; for a convolution
  ``down`` is a conv with the layer's kernel, stride and padding and ``up`` a 1x1 conv (LyCORIS' LoCon).
  ``down`` starts Kaiming-uniform and ``up`` at zero, so training starts from the base model.
- LoHa (LyCORIS, Hyeon-Woo et al. 2022, "FedPara"): ``ΔW = (w1a w1b) ⊙ (w2a w2b) · alpha / r``,
  applied as ``F.linear``/``F.conv2d`` with ``ΔW``; ``w2a`` starts at zero.

Which layers get one: every Linear and Conv2d inside the UNet's input, middle and output blocks
(attention q/k/v/out and feed-forward projections, proj_in/out, ResBlock convs and time-embedding
projections, down/upsamplers), not the stem (``input_blocks.0``), the time embedding or the output conv.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ALGORITHMS = ("LoRA", "LoHa", "LoKr", "OFT")
TRAINABLE_ALGORITHMS = ("LoRA", "LoHa")
_BLOCKS = ("input_blocks.", "middle_block.", "output_blocks.")


def target_modules(unet: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """Module path -> layer, for the layers that get an adapter (see the module docstring)."""
    found: dict[str, nn.Linear | nn.Conv2d] = {}
    for name, module in unet.named_modules():
        if not name.startswith(_BLOCKS) or name.startswith("input_blocks.0."):
            continue
        if isinstance(module, nn.Linear | nn.Conv2d) and module.weight.ndim >= 2:
            found[name] = module
    return found


def _geometry(layer: nn.Linear | nn.Conv2d) -> tuple[int, int, tuple[int, ...]]:
    """(out features, in features, kernel size) of a layer."""
    w = layer.weight
    return int(w.shape[0]), int(w.shape[1]), tuple(int(s) for s in w.shape[2:])


def _conv_args(layer: nn.Linear | nn.Conv2d) -> dict[str, Any]:
    if isinstance(layer, nn.Conv2d):
        return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
    return {}


class LoraAdapter(nn.Module):
    """``lora_down`` (r, in[, kh, kw]) and ``lora_up`` (out, r[, 1, 1]) as in kohya-ss files."""

    kind = "LoRA"

    def __init__(
        self, layer: nn.Linear | nn.Conv2d, rank: int, alpha: float, dtype: torch.dtype, generator: Any
    ):
        super().__init__()
        out_f, in_f, kernel = _geometry(layer)
        device = layer.weight.device
        down = torch.empty((rank, in_f, *kernel), dtype=torch.float32)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        self.lora_down = nn.Parameter(down.to(device, dtype))
        ones = (1,) * len(kernel)
        self.lora_up = nn.Parameter(torch.zeros((out_f, rank, *ones), dtype=dtype, device=device))
        self.alpha = float(alpha)
        self.conv = _conv_args(layer)

    @property
    def scale(self) -> float:
        return self.alpha / self.lora_down.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_down.dtype)
        if self.conv:
            return F.conv2d(F.conv2d(x, self.lora_down, **self.conv), self.lora_up) * self.scale
        return F.linear(F.linear(x, self.lora_down), self.lora_up) * self.scale

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Continue from a file's ``lora_down``/``lora_up`` (their rank replaces this adapter's)."""
        with torch.no_grad():
            self.lora_down = nn.Parameter(tensors["lora_down.weight"].to(self.lora_down))
            self.lora_up = nn.Parameter(tensors["lora_up.weight"].to(self.lora_up))

    def export(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.lora_down, "lora_up.weight": self.lora_up}


class LohaAdapter(nn.Module):
    """LyCORIS LoHa factors ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in·kh·kw), same for w2."""

    kind = "LoHa"

    def __init__(
        self, layer: nn.Linear | nn.Conv2d, rank: int, alpha: float, dtype: torch.dtype, generator: Any
    ):
        super().__init__()
        out_f, in_f, kernel = _geometry(layer)
        self.shape = tuple(layer.weight.shape)
        fan_in = in_f * math.prod(kernel)
        device = layer.weight.device

        def param(*shape: int, std: float) -> nn.Parameter:
            t = torch.randn(shape, generator=generator) * std if std else torch.zeros(shape)
            return nn.Parameter(t.to(device, dtype))

        # LyCORIS' initialisation: w1 random, w2a zero, so the product starts at zero.
        self.hada_w1_a = param(out_f, rank, std=0.1)
        self.hada_w1_b = param(rank, fan_in, std=1.0)
        self.hada_w2_a = param(out_f, rank, std=0.0)
        self.hada_w2_b = param(rank, fan_in, std=1.0)
        self.alpha = float(alpha)
        self.conv = _conv_args(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.alpha / self.hada_w1_b.shape[0]
        delta = (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b) * scale
        delta = delta.reshape(self.shape)
        x = x.to(delta.dtype)
        return F.conv2d(x, delta, **self.conv) if self.conv else F.linear(x, delta)

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
                setattr(self, name, nn.Parameter(tensors[name].to(getattr(self, name))))

    def export(self) -> dict[str, torch.Tensor]:
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        return {n: getattr(self, n) for n in names}


Adapter = LoraAdapter | LohaAdapter
_KINDS: dict[str, type[LoraAdapter] | type[LohaAdapter]] = {"LoRA": LoraAdapter, "LoHa": LohaAdapter}


def _add_output(adapter: nn.Module) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output + adapter(args[0]).to(output.dtype)

    return hook


@dataclass
class AdapterSet:
    """The adapters of one training run, by module path, and the hooks that attach them."""

    adapters: dict[str, Adapter]
    _hooks: list[Any] = field(default_factory=list)

    def parameters(self) -> Iterator[nn.Parameter]:
        for adapter in self.adapters.values():
            yield from adapter.parameters()

    def attach(self, unet: nn.Module) -> None:
        """Hook every adapter onto its layer of `unet` (idempotent: attached hooks are replaced)."""
        self.detach()
        modules = dict(unet.named_modules())
        for name, adapter in self.adapters.items():
            self._hooks.append(modules[name].register_forward_hook(_add_output(adapter)))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def create_adapters(
    unet: nn.Module,
    algorithm: str,
    rank: int,
    *,
    alpha: float | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> AdapterSet:
    """New adapters of `algorithm` ("LoRA" / "LoHa") with `rank` on every target layer of `unet`.

    `alpha` defaults to the rank (scale 1: the learning rate means the same at every rank)."""
    if algorithm not in _KINDS:
        raise ValueError(
            f"algorithm {algorithm!r} cannot be trained here yet; choose one of {', '.join(_KINDS)}"
        )
    kind = _KINDS[algorithm]
    generator = torch.Generator().manual_seed(int(seed) % 2**63)
    adapters = {
        name: kind(layer, rank, float(alpha if alpha is not None else rank), dtype, generator)
        for name, layer in target_modules(unet).items()
    }
    return AdapterSet(adapters)  # type: ignore[arg-type]
