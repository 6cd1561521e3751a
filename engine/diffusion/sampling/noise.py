"""Seeded noise: the initial latent noise and the per-step noise of stochastic samplers.

Everything here follows ComfyUI's draws so that a seed gives ComfyUI's picture:

* initial noise (``prepare_noise``): one CPU generator seeded with the seed, ``randn`` of the latent's
  shape (or one item-sized draw per batch index);
* per-step noise of ancestral samplers, lcm, ... (``GaussianNoise``): one generator on the *latent's*
  device seeded with the same seed (no offset), one ``randn`` of x's shape/dtype per call, in call
  order. On the CPU its first draw therefore repeats the initial noise, as it does in ComfyUI;
* Brownian noise of the SDE samplers (``BrownianTreeNoise``): torchsde's ``BrownianTree`` seeded
  with the seed over [smallest positive sigma, largest sigma], on the CPU (or on x's device for the
  ``*_gpu`` samplers); a sequence of seeds gives one tree per batch item;
* the re-noising of the kept region when inpainting with ddim (``inpaint_noise``): a CPU draw from
  seed + 1.

Nothing here touches torch's global RNG.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import torch


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


class NoiseSource(Protocol):
    """Per-step noise for stochastic samplers: ``noise(sigma, sigma_next)`` returns a standard normal
    tensor shaped like the latent (for Brownian sources: the normalised Brownian increment between
    the two noise levels)."""

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor: ...


class GaussianNoise:
    """Independent N(0, 1) draws in call order from one generator on ``device`` seeded with ``seed``
    (ComfyUI's ``default_noise_sampler``: ancestral samplers, lcm). The arguments of a call are
    ignored; only the number of calls before it matters."""

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
        self._gen = _generator(self.device, seed)

    @classmethod
    def like(cls, x: torch.Tensor, seed: int) -> GaussianNoise:
        return cls(x.shape, seed, dtype=x.dtype, device=x.device)

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        return torch.randn(self.shape, generator=self._gen, dtype=self.dtype, device=self.device)


class BrownianTreeNoise:
    """Normalised increments of a seeded Brownian motion, queried at any noise levels in any order.

    Built on ``torchsde.BrownianTree`` exactly as ComfyUI's ``BrownianTreeNoiseSampler`` /
    ``BatchedBrownianTree`` build it, so the same seed gives bit-identical noise: the tree spans
    [sigma_min, sigma_max] with W = 0 at sigma_min, has x's shape and dtype, lives on the CPU (``cpu``;
    False puts it on x's device, the ``*_gpu`` samplers), and ``entropy`` is the seed. With one seed
    there is one tree for the whole batch; with a sequence of seeds (one per batch item) each item gets
    its own item-shaped tree. ``noise(sigma, sigma_next)`` is (W(sigma_next) − W(sigma)) /
    sqrt(|sigma_next − sigma|), cast to the sigmas' dtype and x's device.
    """

    def __init__(
        self,
        like: torch.Tensor,
        sigma_min: float | torch.Tensor,
        sigma_max: float | torch.Tensor,
        seed: int | Sequence[int],
        *,
        cpu: bool = True,
        sigma_dtype: torch.dtype = torch.float32,
    ) -> None:
        import torchsde  # deferred: only the SDE samplers need it

        # torchsde rounds the tree's ends to its tolerance (1e-6), so querying at the exact largest or
        # smallest sigma falls a hair outside and it warns, then clamps - every run, in ComfyUI too.
        # The clamp is the intended result; the warning is noise in the log.
        warnings.filterwarnings("ignore", message="Should have t", category=UserWarning, module="torchsde")
        self.cpu = cpu
        self.device = like.device
        self.sigma_dtype = sigma_dtype
        t0 = torch.as_tensor(sigma_min, dtype=sigma_dtype)
        t1 = torch.as_tensor(sigma_max, dtype=sigma_dtype)
        self._sign = 1.0
        if not bool(t0 < t1):
            t0, t1, self._sign = t1, t0, -1.0
        w0 = torch.zeros_like(like)
        if isinstance(seed, Sequence):
            seeds = [int(s) for s in seed]
            if len(seeds) != like.shape[0]:
                raise ValueError(
                    f"BrownianTreeNoise got {len(seeds)} seeds for a batch of {like.shape[0]}; "
                    "pass one seed, or one per batch item"
                )
            self.batched = True
            w0 = w0[0]
        else:
            seeds = [int(seed)]
            self.batched = False
        tree_device = torch.device("cpu") if cpu else self.device
        w0 = w0.detach().to(tree_device)
        self._trees = [
            torchsde.BrownianTree(t0.to(tree_device), w0, t1.to(tree_device), entropy=s) for s in seeds
        ]

    @classmethod
    def for_sigmas(
        cls, x: torch.Tensor, sigmas: torch.Tensor, seed: int | Sequence[int], *, cpu: bool = True
    ) -> BrownianTreeNoise:
        """The domain the SDE samplers use: the smallest positive and the largest sigma."""
        pos = sigmas[sigmas > 0]
        return cls(x, pos.min(), sigmas.max(), seed, cpu=cpu, sigma_dtype=sigmas.dtype)

    def _time(self, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=self.sigma_dtype).detach()
        # The CPU tree is queried in float32 whatever the sigmas' dtype (ComfyUI's cpu=True path).
        return t.cpu().float() if self.cpu else t

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        a = torch.as_tensor(sigma, dtype=self.sigma_dtype)
        b = torch.as_tensor(sigma_next, dtype=self.sigma_dtype)
        lo, hi, sign = (a, b, 1.0) if bool(a < b) else (b, a, -1.0)
        lo_q, hi_q = self._time(lo), self._time(hi)
        w: Any = torch.stack([tree(lo_q, hi_q) for tree in self._trees])
        w = w.to(self.device, self.sigma_dtype) * (self._sign * sign)
        w = w if self.batched else w[0]
        return w / (b - a).abs().sqrt().to(self.device)


def inpaint_noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    """The noise that re-noises the kept region for samplers registered with random inpaint noise
    (ddim): a CPU float32 draw of ``like``'s shape from seed + 1 (ComfyUI's inpaint "random" option),
    cast to ``like``'s dtype and device."""
    # Wrap at 2^64 (torch seeds are taken modulo 2^64): ComfyUI's seed + 1 overflows for the largest seed.
    gen = _generator(torch.device("cpu"), (int(seed) + 1) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randn(tuple(like.shape), generator=gen, device="cpu").to(like.dtype).to(like.device)


def prepare_noise(latent: torch.Tensor, seed: int, batch_inds: Sequence[int] | None = None) -> torch.Tensor:
    """Initial noise for a latent batch, drawn on the CPU (ComfyUI's ``prepare_noise`` semantics).

    Without ``batch_inds`` the whole batch is one ``randn`` of the latent's shape from a generator
    seeded with ``seed``. With ``batch_inds`` (a LATENT's "batch_index", e.g. [2, 3] for items picked
    out of a batch) the generator draws one item-sized tensor per index 0..max(batch_inds) in order and
    item i gets draw number batch_inds[i] - so an item keeps its noise when it is taken out of a batch.
    """
    gen = _generator(torch.device("cpu"), seed)
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
