"""Shared types and helpers for sampler functions.

A sampler is ``fn(denoiser, x, sigmas, *, noise=None, callback=None, **options) -> x`` where
``denoiser(x, sigma_batch) -> x0 estimate`` (Karras et al. 2022 notation D(x; sigma)), ``x`` starts
at noise level sigmas[0] in VE form x = x0 + sigma·n, and ``sigmas`` is descending.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..noise import NoiseSource


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports after each step: the one progress shape from the samplers to the sink.

    ``index`` is 0-based (the sink shows ``index + 1`` of ``total``); ``denoised`` is the step's
    clean-latent estimate, which a preview renders. The entry points pass the callback to the sampler
    unchanged, and one adapter (``engine.handles.sampling.StepReporter``) turns it into
    ``context.progress(value, max, preview)``."""

    index: int
    total: int
    x: torch.Tensor
    denoised: torch.Tensor
    sigma: float
    sigma_next: float


# Raising from the callback (an interrupt) stops the sampler; the exception propagates unchanged.
StepCallback = Callable[[StepInfo], None]


def as_floats(sigmas: torch.Tensor) -> list[float]:
    """Sigmas as Python floats: step coefficients are then cheap scalar arithmetic rather than
    tiny tensor ops, which keeps per-step overhead low."""
    return [float(s) for s in sigmas.detach().to("cpu", torch.float64)]


def sigma_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)


def call(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return denoiser(x, sigma_batch(x, sigma))


def report(
    cb: StepCallback | None, i: int, total: int, x: torch.Tensor, den: torch.Tensor, s: float, sn: float
) -> None:
    if cb is not None:
        cb(StepInfo(i, total, x, den, s, sn))


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE in VE form: (x − D(x; sigma)) / sigma (Karras et al.
    2022, eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the step sigma → sigma_next into a deterministic part down to sigma_down and fresh noise
    of std sigma_up, with sigma_down² + sigma_up² = sigma_next² (the DDPM/DDIM ancestral variance,
    Song et al. 2021 eq. 16 scaled by eta, in VE form as in k-diffusion)."""
    if not eta or sigma_next == 0.0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    down = math.sqrt(max(sigma_next**2 - up**2, 0.0))
    return down, up


def require_noise(noise: NoiseSource | None, name: str) -> NoiseSource:
    if noise is None:
        raise ValueError(
            f"sampler {name!r} is stochastic and needs a seeded noise source (noise=GaussianNoise(...) or "
            "BrownianTreeNoise(...) from engine.diffusion.sampling.noise, or SamplerSpec.make_noise); "
            "it never uses the global RNG"
        )
    return noise


def add_noise(
    x: torch.Tensor, noise: NoiseSource | None, name: str, sigma: float, sigma_next: float, scale: float
) -> torch.Tensor:
    """x + noise(sigma, sigma_next)·scale. A draw is taken even when scale is 0 (eta = 0), so the
    generator stays in step with ComfyUI's, which always draws there; without a noise source a zero
    scale needs none."""
    if noise is None and scale == 0.0:
        return x
    return x + require_noise(noise, name)(sigma, sigma_next) * scale


def churn(
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    steps: int,
    *,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise: NoiseSource | None,
    name: str,
) -> tuple[torch.Tensor, float]:
    """Karras et al. 2022, Algorithm 2, lines 5-7: temporarily raise the noise level from sigma to
    sigma_hat = sigma * (1 + gamma) by adding fresh noise, with gamma = min(S_churn / N, sqrt(2) - 1)
    inside [S_tmin, S_tmax]. Returns the new x and sigma_hat (== sigma when churn is off)."""
    gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1.0)
    if gamma > 0:
        eps = require_noise(noise, f"{name} (s_churn > 0)")(sigma, sigma_next) * s_noise
        x = x + eps * math.sqrt(sigma_hat**2 - sigma**2)
    return x, sigma_hat
