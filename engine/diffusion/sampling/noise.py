"""Seeded noise: the initial latent noise and the per-step noise of stochastic samplers.

All noise is drawn on the CPU from explicit ``torch.Generator`` objects and then moved to the target
device/dtype, so a seed gives the same picture on any device (DESIGN.md §5). Nothing here touches
torch's global RNG.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import torch

_MASK64 = (1 << 64) - 1


def _mix64(*parts: int) -> int:
    """Hash integers into a 63-bit seed (SplitMix64 finaliser, Steele et al. 2014): nearby inputs
    give unrelated generator seeds, so tree nodes draw independent noise."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def _randn(shape: Sequence[int], seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


class NoiseSource(Protocol):
    """Per-step noise for stochastic samplers: ``noise(sigma, sigma_next)`` returns a standard normal
    tensor shaped like the latent (for Brownian sources: the normalised Brownian increment between
    the two noise levels)."""

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor: ...


class GaussianNoise:
    """Independent N(0, 1) draws from one CPU generator, in call order (ancestral samplers)."""

    def __init__(
        self,
        shape: Sequence[int],
        seed: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self._gen = torch.Generator(device="cpu")
        # Derived seed: keep step noise independent of the initial noise drawn from ``seed`` itself.
        self._gen.manual_seed(_mix64(seed, 0x5354455053))

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        z = torch.randn(self.shape, generator=self._gen, dtype=torch.float32)
        return z.to(self.device, self.dtype)


class BrownianTreeNoise:
    """A seeded Brownian motion W on [t0, t1] that can be queried at any time in any order.

    Why not torchsde: we only need W at the noise levels a sampler visits, reproducibly from a seed
    and (ideally) the same path whatever the step count, so that changing the steps changes the image
    smoothly (the reason k-diffusion uses a Brownian tree for the DPM++ SDE samplers). A Lévy
    construction does that exactly and in ~60 lines: W(t0) = 0, W(t1) ~ N(0, t1 − t0), and the
    midpoint of a dyadic cell [a, b] is the Brownian bridge sample
    W(m) = (W(a) + W(b))/2 + sqrt((b − a)/4)·z with z drawn from a generator seeded by
    (seed, depth, index) (Lévy 1948; Karatzas & Shreve, §2.3). Points inside a leaf cell of width
    (t1 − t0)/2^depth are bridge samples from the cell ends, seeded by the point itself. Leaf points
    in the same cell are then conditionally independent rather than jointly Brownian, an error
    confined to intervals of ~1e-5 of the range. Tree nodes are cached (LRU) so consecutive queries
    share their common ancestors.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seed: int,
        t0: float,
        t1: float,
        *,
        depth: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        cache_size: int = 512,
    ) -> None:
        t0, t1 = float(min(t0, t1)), float(max(t0, t1))
        if not t1 > t0:
            raise ValueError(f"BrownianTreeNoise needs t0 < t1, got [{t0}, {t1}]")
        self.shape = tuple(shape)
        self.seed = int(seed)
        self.t0, self.t1 = t0, t1
        self.depth = depth
        self.dtype = dtype
        self.device = torch.device(device)
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._w1 = _randn(self.shape, _mix64(self.seed, 1, 0, 0)) * math.sqrt(t1 - t0)
        # Samplers query W at the same sigma in consecutive steps (end of one interval = start of
        # the next); remembering the last few W(t) halves the work.
        self._points: OrderedDict[float, torch.Tensor] = OrderedDict()

    @classmethod
    def for_sigmas(cls, x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> BrownianTreeNoise:
        """The usual domain: the smallest positive and the largest sigma of the schedule."""
        pos = sigmas[sigmas > 0]
        lo, hi = float(pos.min()), float(sigmas.max())
        if hi <= lo:  # a single noise level: widen so the tree is well defined
            hi = lo * 2.0 + 1e-3
        return cls(x.shape, seed, lo, hi, dtype=x.dtype, device=x.device)

    def _node(self, d: int, k: int, wa: torch.Tensor, wb: torch.Tensor, width: float) -> torch.Tensor:
        key = (d, k)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        z = _randn(self.shape, _mix64(self.seed, 2, d, k))
        w = 0.5 * (wa + wb) + math.sqrt(width / 4.0) * z
        self._cache[key] = w
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return w

    def w(self, t: float) -> torch.Tensor:
        """W(t) on the CPU in float32 (t is clamped to [t0, t1])."""
        t = min(max(float(t), self.t0), self.t1)
        hit = self._points.get(t)
        if hit is None:
            hit = self._points[t] = self._w(t)
            if len(self._points) > 8:
                self._points.popitem(last=False)
        return hit

    def _w(self, t: float) -> torch.Tensor:
        a, b = self.t0, self.t1
        wa, wb = torch.zeros(self.shape), self._w1
        if t == a:
            return wa
        if t == b:
            return wb
        k = 0
        for d in range(self.depth):
            m = 0.5 * (a + b)
            wm = self._node(d, k, wa, wb, b - a)
            if t == m:
                return wm
            if t < m:
                b, wb, k = m, wm, 2 * k
            else:
                a, wa, k = m, wm, 2 * k + 1
        # Leaf: exact bridge marginal given the cell ends, seeded by the float bits of t.
        bits = int(torch.tensor(t, dtype=torch.float64).view(torch.int64))
        z = _randn(self.shape, _mix64(self.seed, 3, bits))
        frac = (t - a) / (b - a)
        return wa + frac * (wb - wa) + math.sqrt((t - a) * (b - t) / (b - a)) * z

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        s, n = float(sigma), float(sigma_next)
        lo, hi = min(s, n), max(s, n)
        lo_c, hi_c = max(lo, self.t0), min(hi, self.t1)
        if hi_c <= lo_c:
            raise ValueError(
                f"Brownian noise queried on [{lo}, {hi}], outside the tree's range [{self.t0}, {self.t1}]; "
                "build the tree from the same sigmas the sampler uses (BrownianTreeNoise.for_sigmas)"
            )
        inc = (self.w(hi_c) - self.w(lo_c)) / math.sqrt(hi_c - lo_c)
        return inc.to(self.device, self.dtype)


def prepare_noise(latent: torch.Tensor, seed: int, batch_inds: Sequence[int] | None = None) -> torch.Tensor:
    """Initial noise for a latent batch, drawn on the CPU (ComfyUI's ``prepare_noise`` semantics).

    Without ``batch_inds`` the whole batch is one ``randn`` of the latent's shape from a generator
    seeded with ``seed``. With ``batch_inds`` (a LATENT's "batch_index", e.g. [2, 3] for items picked
    out of a batch) the generator draws one item-sized tensor per index 0..max(batch_inds) in order and
    item i gets draw number batch_inds[i] - so an item keeps its noise when it is taken out of a batch.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    shape = tuple(latent.shape)
    dtype = latent.dtype if latent.is_floating_point() else torch.float32
    if batch_inds is None:
        return torch.randn(shape, generator=gen, dtype=dtype, device="cpu")
    inds = [int(i) for i in batch_inds]
    if len(inds) != shape[0]:
        raise ValueError(f"batch_index has {len(inds)} entries but the latent batch has {shape[0]} items")
    if min(inds) < 0:
        raise ValueError(f"batch_index entries must be >= 0, got {inds}")
    wanted = set(inds)
    draws: dict[int, torch.Tensor] = {}
    for i in range(max(inds) + 1):
        z = torch.randn((1,) + shape[1:], generator=gen, dtype=dtype, device="cpu")
        if i in wanted:
            draws[i] = z
    return torch.cat([draws[i] for i in inds], dim=0)
