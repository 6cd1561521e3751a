"""Every kind of weight patch: what LoRA-family adapters, model merges and diffs add to a weight.

A patch says how much to add to one weight (`delta(weight)`, float32, any shape with the weight's number
of elements); `engine.memory.patcher` applies the patch lists of a model clone, and
`engine.diffusion.lora` reads adapter files into these objects. The formulas follow the papers and the
reference implementations named on each class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class WeightPatch(Protocol):
    """Anything that can say how much to add to a weight. `weight` is the current weight in float32 on
    the device where it lives; return a tensor with as many elements (reshaped to the weight's shape)."""

    def delta(self, weight: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DiffPatch:
    """A full-weight difference (e.g. a model merge's `B - A`, or a diffusers/kohya 'diff' entry)."""

    diff: torch.Tensor

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return self.diff.to(device=weight.device, dtype=torch.float32)


@dataclass(frozen=True)
class LoRAPatch:
    """Low-rank update `up @ down * alpha / rank` (Hu et al. 2021, "LoRA", eq. 3; alpha/rank scaling as in
    kohya-ss sd-scripts). `mid` is the LoCon/LyCORIS Tucker core for convolutions: down (r, in, 1, 1),
    mid (r, r, kh, kw), up (out, r, 1, 1) give delta[o,i,h,w] = sum_rs up[o,r] mid[r,s,h,w] down[s,i]."""

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        device, f32 = weight.device, torch.float32
        up = self.up.to(device=device, dtype=f32).flatten(start_dim=1)
        down = self.down.to(device=device, dtype=f32).flatten(start_dim=1)
        scale = 1.0 if self.alpha is None else self.alpha / self.rank
        if self.mid is not None:
            mid = self.mid.to(device=device, dtype=f32)
            out = torch.einsum("or,rshw,si->oihw", up, mid, down)
        else:
            out = up @ down
        return out * scale


def _f32(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(device=like.device, dtype=torch.float32)


@dataclass(frozen=True)
class LoHaPatch:
    """LoHa: a Hadamard product of two low-rank products (Hyeon-Woo et al. 2022, "FedPara", eq. 2;
    LyCORIS ``loha.py``): ``delta = (w1a @ w1b) * (w2a @ w2b) * alpha / rank`` with ``rank =
    w1b.shape[0]``. With Tucker cores ``t1``/``t2`` (convolutions, "use_tucker") each factor is
    ``einsum('ijkl,jr,ip->prkl', t, wb, wa)``."""

    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float | None = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @staticmethod
    def _factor(
        wa: torch.Tensor, wb: torch.Tensor, t: torch.Tensor | None, like: torch.Tensor
    ) -> torch.Tensor:
        a, b = _f32(wa, like), _f32(wb, like).flatten(start_dim=1)
        if t is None:
            return a @ b
        return torch.einsum("ijkl,jr,ip->prkl", _f32(t, like), b, a)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        scale = 1.0 if self.alpha is None else self.alpha / self.rank
        w1 = self._factor(self.w1a, self.w1b, self.t1, weight)
        w2 = self._factor(self.w2a, self.w2b, self.t2, weight)
        return (w1 * w2).reshape(weight.shape) * scale


@dataclass(frozen=True)
class LoKrPatch:
    """LoKr: a Kronecker product ``delta = kron(w1, w2) * scale`` (Yeh et al. 2023, "Navigating
    Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation", §3; LyCORIS ``lokr.py``).

    Each factor is either stored whole (``w1``/``w2``) or as a low-rank product (``w1_a @ w1_b``,
    ``w2_a @ w2_b``, the latter optionally with a Tucker core ``t2``). As in LyCORIS, ``alpha / rank``
    scaling applies only when a factor is decomposed (rank = that factor's inner size); full factors
    are used unscaled. For convolutions ``w2`` is 4-D and ``w1`` is broadcast over its kernel."""

    w1: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.w1 is None and (self.w1_a is None or self.w1_b is None):
            raise ValueError("LoKr patch needs lokr_w1 or both lokr_w1_a and lokr_w1_b")
        if self.w2 is None and (self.w2_a is None or self.w2_b is None):
            raise ValueError("LoKr patch needs lokr_w2 or both lokr_w2_a and lokr_w2_b")

    @property
    def scale(self) -> float:
        if self.alpha is None:
            return 1.0
        if self.w2_b is not None:
            return self.alpha / int(self.w2_b.shape[0])
        if self.w1_b is not None:
            return self.alpha / int(self.w1_b.shape[0])
        return 1.0

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        if self.w1 is not None:
            w1 = _f32(self.w1, weight)
        else:
            assert self.w1_a is not None and self.w1_b is not None
            w1 = _f32(self.w1_a, weight) @ _f32(self.w1_b, weight)
        if self.w2 is not None:
            w2 = _f32(self.w2, weight)
        else:
            assert self.w2_a is not None and self.w2_b is not None
            a, b = _f32(self.w2_a, weight), _f32(self.w2_b, weight)
            if self.t2 is not None:
                w2 = torch.einsum("ijkl,jr,ip->prkl", _f32(self.t2, weight), b.flatten(start_dim=1), a)
            else:
                w2 = a @ b.flatten(start_dim=1)
                if weight.ndim == 4 and w2.numel() * w1.numel() == weight.numel():
                    kh, kw = weight.shape[2:]
                    w2 = w2.reshape(w2.shape[0], -1, kh, kw)
        if w2.ndim == 4 and w1.ndim == 2:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2).reshape(weight.shape) * self.scale


@dataclass(frozen=True)
class SetPatch:
    """Replace the weight by ``value`` (ComfyUI's "set" patch, e.g. the norm scales a BFL Flux control LoRA
    carries): applied whatever the strengths, as ComfyUI does."""

    value: torch.Tensor

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return self.value.to(device=weight.device, dtype=torch.float32).reshape(weight.shape) - weight


@dataclass(frozen=True)
class GrowPatch:
    """``inner`` on the weight zero-padded to ``shape`` first (ComfyUI's "reshape_weight": BFL's Flux control
    LoRAs widen ``img_in`` to take the control latent's extra input channels). The original values keep the
    leading positions of every axis."""

    inner: WeightPatch
    shape: tuple[int, ...]

    def grow(self, weight: torch.Tensor) -> torch.Tensor:
        if tuple(weight.shape) == self.shape:
            return weight
        if len(self.shape) != weight.ndim or any(
            n < o for n, o in zip(self.shape, weight.shape, strict=True)
        ):
            raise ValueError(f"cannot grow a {tuple(weight.shape)} weight to {self.shape}")
        out = weight.new_zeros(self.shape)
        out[tuple(slice(0, n) for n in weight.shape)] = weight
        return out

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return self.inner.delta(weight)


def apply_patch(weight: torch.Tensor, patch: WeightPatch, strength: float) -> torch.Tensor:
    """``weight`` (float32) after one patch at ``strength``: grown first for a `GrowPatch`, replaced for a
    `SetPatch`, else ``weight + strength * delta``. ValueError when the patch does not fit the weight."""
    if isinstance(patch, GrowPatch):
        weight = patch.grow(weight)
    if isinstance(patch, SetPatch):
        return weight + patch.delta(weight)
    delta = patch.delta(weight)
    if delta.numel() != weight.numel():
        raise ValueError(
            f"the patch has {tuple(delta.shape)} ({delta.numel()} values) but the weight is "
            f"{tuple(weight.shape)}; the patch file was probably made for a different model architecture"
        )
    return weight + strength * delta.reshape(weight.shape)


def as_patch(value: WeightPatch | torch.Tensor) -> WeightPatch:
    """A patch object for `value`; a bare tensor is a full-weight difference."""
    if isinstance(value, torch.Tensor):
        return DiffPatch(value)
    if not isinstance(value, WeightPatch):
        raise TypeError(
            f"a patch must be a Tensor (full diff) or have .delta(weight); got {type(value).__name__}"
        )
    return value
