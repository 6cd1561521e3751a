"""Samplers the custom-sampling nodes offer outside the KSampler list (ComfyUI's
comfy_extras/nodes_advanced_samplers.py): LCM with progressive upscaling, and the "alternative" Euler
CFG++ form.

Neither is registered in the sampler registry: the nodes SamplerLCMUpscale and SamplerEulerCFGpp build a
``SamplerSpec`` around them with their options.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..noise import NoiseSource
from ._common import Denoiser, StepCallback, as_floats, call, report, require_noise
from .cfg_pp import call_with_uncond

# (latent, width, height) -> the latent resized to width × height.
Resize = Callable[[torch.Tensor, int, int], torch.Tensor]


def _fresh_normal(noise: NoiseSource, like: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Independent N(0, 1) values shaped like `like`, taken in order from the seeded source's draws
    (whose shape is the initial latent's): enough whole draws are flattened and joined."""
    needed, parts, have = like.numel(), [], 0
    while have < needed:
        part = noise(sigma, sigma_next).flatten()
        parts.append(part)
        have += part.numel()
    return torch.cat(parts)[:needed].reshape(like.shape).to(like)


@torch.no_grad()
def sample_lcm_upscale(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    resize: Resize | None = None,
    total_upscale: float = 2.0,
    upscale_steps: int | None = None,
) -> torch.Tensor:
    """LCM sampling (jump to the x0 estimate, re-noise to the next level) that also resizes the estimate
    after each of the first steps, by factors spaced evenly from 1 to `total_upscale` (over
    `upscale_steps` steps; default: half the schedule)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    if upscale_steps is None:
        upscale_steps = max(len(sig) // 2 + 1, 2)
    else:
        upscale_steps = min(upscale_steps + 1, len(sig) + 1)
    factors = np.linspace(1.0, total_upscale, upscale_steps)[1:]
    height, width = x.shape[-2], x.shape[-1]
    for i in range(n):
        den = call(denoiser, x, sig[i])
        report(callback, i, n, x, den, sig[i], sig[i + 1])
        x = den
        if i < len(factors) and resize is not None:
            x = resize(x, round(width * factors[i]), round(height * factors[i]))
        if sig[i + 1] > 0:
            x = x + sig[i + 1] * _fresh_normal(require_noise(noise, "lcm_upscale"), x, sig[i], sig[i + 1])
    return x


@torch.no_grad()
def sample_euler_cfg_pp_alternative(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler with the CFG++ direction (x − 2·D_cfg + D_uncond)/sigma: ComfyUI's "alternative" version
    of SamplerEulerCFG++ (the regular one is euler_cfg_pp)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        den, uncond = call_with_uncond(denoiser, x, sig[i])
        report(callback, i, n, x, den, sig[i], sig[i + 1])
        direction = (x - den + uncond - den) / sig[i]
        x = x + direction * (sig[i + 1] - sig[i])
    return x
