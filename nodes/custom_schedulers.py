"""Custom-sampling schedules and sigma tools (ComfyUI's sampling/custom_sampling/schedulers and /sigmas
nodes beyond the basic ones in nodes/custom_sampling.py): polyexponential, Laplace and VP schedules
(k-diffusion's formulas), the beta schedule, the tabulated Align Your Steps / GITS / OptimalSteps
schedules, splitting and extending sigma lists, and AddNoise.

A SIGMAS value is a 1-D float tensor of decreasing noise levels, usually ending in 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine import api
from engine.api import sampling as hs

from ._schedule_tables import ALIGN_YOUR_STEPS, GITS, OPTIMAL_STEPS

SCHEDULERS = "sampling/custom_sampling/schedulers"
SIGMAS = "sampling/custom_sampling/sigmas"
SIGMA_MAX, SIGMA_MIN = 14.614642, 0.0291675  # SD1's schedule ends, ComfyUI's widget defaults


def _steps(default: int = 20, minimum: int = 1, maximum: int = 10000) -> api.Input:
    return api.Int("steps", default, min=minimum, max=maximum, step=None)


def _sigma_range() -> list[api.Input]:
    return [
        api.Float("sigma_max", SIGMA_MAX, min=0.0, max=5000.0, step=0.01, round=False),
        api.Float("sigma_min", SIGMA_MIN, min=0.0, max=5000.0, step=0.01, round=False),
    ]


def _denoise() -> api.Input:
    return api.Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def polyexponential_sigmas(steps: int, sigma_max: float, sigma_min: float, rho: float) -> torch.Tensor:
    """log sigma = log sigma_min + r^rho · (log sigma_max − log sigma_min), r from 1 down to 0, then 0
    (rho = 1 is the exponential schedule)."""
    ramp = torch.linspace(1, 0, steps) ** rho
    span = math.log(sigma_max) - math.log(sigma_min)
    return _with_zero(torch.exp(ramp * span + math.log(sigma_min)))


def laplace_sigmas(steps: int, sigma_max: float, sigma_min: float, mu: float, beta: float) -> torch.Tensor:
    """The Laplace schedule (Hang et al. 2024, "Improved Noise Schedule for Diffusion Training"): log
    sigma = mu − beta·sign(0.5 − t)·log(1 − 2|0.5 − t| + 1e-5) for t from 0 to 1, clamped to the range.
    As in ComfyUI (k-diffusion's get_sigmas_laplace), no final 0 is appended."""
    t = torch.linspace(0, 1, steps)
    half = 0.5 - t
    log_sigma = mu - beta * torch.sign(half) * torch.log(1 - 2 * torch.abs(half) + 1e-5)
    return torch.clamp(torch.exp(log_sigma), min=sigma_min, max=sigma_max)


def vp_sigmas(steps: int, beta_d: float, beta_min: float, eps_s: float) -> torch.Tensor:
    """The continuous VP schedule (Song et al. 2021): sigma(t) = sqrt(exp(beta_d·t²/2 + beta_min·t) − 1)
    for t from 1 down to eps_s, then 0."""
    t = torch.linspace(1, eps_s, steps)
    return _with_zero(torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t)))


@api.node(
    "PolyexponentialScheduler",
    category=SCHEDULERS,
    inputs=[_steps(), *_sigma_range(), api.Float("rho", 1.0, min=0.0, max=100.0, step=0.01, round=False)],
    outputs=[api.SIGMAS],
)
def polyexponential_scheduler(steps: int, sigma_max: float, sigma_min: float, rho: float):
    return (polyexponential_sigmas(steps, sigma_max, sigma_min, rho),)


@api.node(
    "LaplaceScheduler",
    category=SCHEDULERS,
    inputs=[
        _steps(),
        *_sigma_range(),
        api.Float("mu", 0.0, min=-10.0, max=10.0, step=0.1, round=False),
        api.Float("beta", 0.5, min=0.0, max=10.0, step=0.1, round=False),
    ],
    outputs=[api.SIGMAS],
)
def laplace_scheduler(steps: int, sigma_max: float, sigma_min: float, mu: float, beta: float):
    return (laplace_sigmas(steps, sigma_max, sigma_min, mu, beta),)


@api.node(
    "VPScheduler",
    category=SCHEDULERS,
    inputs=[
        _steps(),
        api.Float("beta_d", 19.9, min=0.0, max=5000.0, step=0.01, round=False),
        api.Float("beta_min", 0.1, min=0.0, max=5000.0, step=0.01, round=False),
        api.Float("eps_s", 0.001, min=0.0, max=1.0, step=0.0001, round=False),
    ],
    outputs=[api.SIGMAS],
)
def vp_scheduler(steps: int, beta_d: float, beta_min: float, eps_s: float):
    return (vp_sigmas(steps, beta_d, beta_min, eps_s),)


@api.node(
    "BetaSamplingScheduler",
    category=SCHEDULERS,
    inputs=[
        api.Input("model", api.MODEL),
        _steps(),
        api.Float("alpha", 0.6, min=0.0, max=50.0, step=0.01, round=False),
        api.Float("beta", 0.6, min=0.0, max=50.0, step=0.01, round=False),
    ],
    outputs=[api.SIGMAS],
)
def beta_sampling_scheduler(model: Any, steps: int, alpha: float, beta: float):
    """The beta schedule (Lee et al. 2024) over the model's timesteps, with the given Beta(alpha, beta)."""
    return (hs.beta_sigmas(model, steps, alpha, beta),)


def loglinear_interp(levels: Sequence[float], count: int) -> np.ndarray:
    """`count` decreasing values interpolating `levels` linearly in log space at evenly spaced positions
    (the Align Your Steps authors' recipe for other step counts)."""
    ascending = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    positions = np.linspace(0, 1, len(levels))
    return np.exp(np.interp(np.linspace(0, 1, count), positions, ascending))[::-1].copy()


def tabulated_sigmas(levels: Sequence[float], steps: int, denoise: float) -> torch.Tensor:
    """A tabulated schedule resampled to steps + 1 levels (when it has another length); with denoise < 1
    its last round(steps · denoise) steps; the last level replaced by 0."""
    if denoise <= 0.0:
        return torch.zeros(0)
    kept = round(steps * denoise) if denoise < 1.0 else steps
    sigmas = np.asarray(levels, dtype=np.float64)
    if len(sigmas) != steps + 1:
        sigmas = loglinear_interp(levels, steps + 1)
    sigmas = sigmas[-(kept + 1) :].copy()
    sigmas[-1] = 0.0
    return torch.tensor(sigmas, dtype=torch.float32)


@api.node(
    "AlignYourStepsScheduler",
    category=SCHEDULERS,
    inputs=[api.Combo("model_type", list(ALIGN_YOUR_STEPS)), _steps(10), _denoise()],
    outputs=[api.SIGMAS],
)
def align_your_steps_scheduler(model_type: str, steps: int, denoise: float):
    """NVIDIA's Align Your Steps schedules (10 steps, resampled for other counts)."""
    return (tabulated_sigmas(ALIGN_YOUR_STEPS[model_type], steps, denoise),)


@api.node(
    "GITSScheduler",
    category=SCHEDULERS,
    inputs=[
        api.Float("coeff", 1.2, min=0.8, max=1.5, step=0.05),
        _steps(10, minimum=2, maximum=1000),
        _denoise(),
    ],
    outputs=[api.SIGMAS],
)
def gits_scheduler(coeff: float, steps: int, denoise: float):
    """GITS schedules for SD1.5: the optimised table for 2..20 steps, the 20-step one resampled above."""
    key = round(coeff * 100)
    if key not in GITS:
        raise ValueError(f"GITSScheduler: coeff {coeff} has no table; use 0.80 to 1.50 in steps of 0.05")
    rows = GITS[key]
    levels = rows[steps - 2] if steps <= len(rows) + 1 else rows[-1]
    return (tabulated_sigmas(levels, steps, denoise),)


@api.node(
    "OptimalStepsScheduler",
    category=SCHEDULERS,
    inputs=[api.Combo("model_type", list(OPTIMAL_STEPS)), _steps(20, minimum=3, maximum=1000), _denoise()],
    outputs=[api.SIGMAS],
)
def optimal_steps_scheduler(model_type: str, steps: int, denoise: float):
    """OptimalSteps schedules for flow models (resampled to the step count)."""
    return (tabulated_sigmas(OPTIMAL_STEPS[model_type], steps, denoise),)


@api.node(
    "SplitSigmasDenoise",
    category=SIGMAS,
    inputs=[api.Input("sigmas", api.SIGMAS), _denoise()],
    outputs=[api.Output(api.SIGMAS, "high_sigmas"), api.Output(api.SIGMAS, "low_sigmas")],
)
def split_sigmas_denoise(sigmas: torch.Tensor, denoise: float):
    """Split off the last round(steps · denoise) steps as low_sigmas; high_sigmas is everything before
    them (sharing no level: ComfyUI's slicing, so denoise 0 gives an empty high part)."""
    steps = max(sigmas.shape[-1] - 1, 0)
    kept = round(steps * denoise)
    return (sigmas[:-kept], sigmas[-(kept + 1) :])


@api.node(
    "SetFirstSigma",
    category=SIGMAS,
    inputs=[
        api.Input("sigmas", api.SIGMAS),
        api.Float("sigma", 136.0, min=0.0, max=20000.0, step=0.001, round=False),
    ],
    outputs=[api.SIGMAS],
)
def set_first_sigma(sigmas: torch.Tensor, sigma: float):
    out = sigmas.clone()
    out[0] = sigma
    return (out,)


SPACINGS = {
    "linear": lambda t: t,
    "cosine": lambda t: torch.sin(t * math.pi / 2),
    "sine": lambda t: 1 - torch.cos(t * math.pi / 2),
}


@api.node(
    "ExtendIntermediateSigmas",
    category=SIGMAS,
    inputs=[
        api.Input("sigmas", api.SIGMAS),
        api.Int("steps", 2, min=1, max=100, step=None),
        api.Float("start_at_sigma", -1.0, min=-1.0, max=20000.0, step=0.01, round=False),
        api.Float("end_at_sigma", 12.0, min=0.0, max=20000.0, step=0.01, round=False),
        api.Combo("spacing", list(SPACINGS)),
    ],
    outputs=[api.SIGMAS],
)
def extend_intermediate_sigmas(
    sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float, spacing: str
):
    """Split each step that starts at a sigma in [end_at_sigma, start_at_sigma] (a negative start: no
    upper bound) into `steps` sub-steps, spaced linearly or eased (cosine / sine) between its ends."""
    upper = math.inf if start_at_sigma < 0 else start_at_sigma
    fractions = SPACINGS[spacing](torch.linspace(0, 1, steps + 1)[1:-1])
    out: list[float] = []
    for current, following in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        out.append(current)
        if end_at_sigma <= current <= upper:
            out.extend((fractions * (following - current) + current).tolist())
    if len(sigmas) > 0:
        out.append(float(sigmas[-1]))
    return (torch.tensor(out, dtype=torch.float32),)


@api.node(
    "SamplingPercentToSigma",
    category=SIGMAS,
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("sampling_percent", 0.0, min=0.0, max=1.0, step=0.0001),
        api.Boolean("return_actual_sigma", False),
    ],
    outputs=[api.Output(api.FLOAT, "sigma_value")],
)
def sampling_percent_to_sigma(model: Any, sampling_percent: float, return_actual_sigma: bool):
    """The model's sigma at a fraction of the way through sampling (0 = start). At 0 and 1 the value
    used for range checks lies beyond the schedule; return_actual_sigma gives sigma_max / sigma_min."""
    ms = model.model_sampling
    if return_actual_sigma and sampling_percent == 0.0:
        return (float(ms.sigma_max),)
    if return_actual_sigma and sampling_percent == 1.0:
        return (float(ms.sigma_min),)
    return (float(ms.percent_to_sigma(sampling_percent)),)


@api.node(
    "AddNoise",
    category="_for_testing/custom_sampling/noise",
    inputs=[
        api.Input("model", api.MODEL),
        api.Input("noise", api.NOISE),
        api.Input("sigmas", api.SIGMAS),
        api.Input("latent_image", api.LATENT),
    ],
    outputs=[api.LATENT],
)
def add_noise(model: Any, noise: Any, sigmas: torch.Tensor, latent_image: dict[str, Any]):
    """Noise the latent to the schedule's span |sigma_first − sigma_last| (or its only sigma) the way the
    model starts sampling (x + sigma·n for eps/v models, a flow model's mix); non-finite values become 0."""
    if len(sigmas) == 0:
        return (latent_image,)
    samples = latent_image["samples"]
    scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
    drawn = noise.generate(latent_image).to(samples)
    noisy = model.model_sampling.noise_scaling(scale.to(samples), drawn, samples)
    out = dict(latent_image)
    out["samples"] = torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0)
    return (out,)


NODES = [
    polyexponential_scheduler,
    laplace_scheduler,
    vp_scheduler,
    beta_sampling_scheduler,
    align_your_steps_scheduler,
    gits_scheduler,
    optimal_steps_scheduler,
    split_sigmas_denoise,
    set_first_sigma,
    extend_intermediate_sigmas,
    sampling_percent_to_sigma,
    add_noise,
]
