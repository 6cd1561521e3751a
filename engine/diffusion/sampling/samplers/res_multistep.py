"""res_multistep (plain, ancestral, CFG++) and gradient_estimation (plain, CFG++), with ComfyUI's
update rules.

res_multistep is the second-order multistep exponential integrator "RES" of Zhang et al. 2023
("Improved order analysis and design of exponential integrator for diffusion models sampling",
arXiv:2308.02157): x_next = e^{−h}·x + h·(b1·D_i + b2·D_{i−1}) with b1 = phi1(−h) − phi2(−h)/c2,
b2 = phi2(−h)/c2, lambda = −log sigma. gradient_estimation is Euler plus a correction
(gamma − 1)·(d_i − d_{i−1})·dt from the change of the derivative (Permenter & Yuan 2024, "Interpreting
and Improving Diffusion Models from an Optimization Perspective").
"""

from __future__ import annotations

import math
from functools import partial

import torch

from ..noise import NoiseSource
from ._common import Denoiser, StepCallback, add_noise, ancestral_step, as_floats, call, report
from .cfg_pp import call_with_uncond


def _plain(denoiser: Denoiser, x: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    den = call(denoiser, x, s)
    return den, den


def _phi1(t: float) -> float:
    return math.expm1(t) / t


def _phi2(t: float) -> float:
    return (_phi1(t) - 1.0) / t


def _res_coefficients(h: float, c2: float) -> tuple[float, float]:
    """(b1, b2) of the RES 2-step update. ComfyUI maps a NaN coefficient (0/0 for a repeated
    sigma) to 0; a zero c2 makes the history term meaningless, so this falls back to first order."""
    p1, p2 = _phi1(-h), _phi2(-h)
    if c2 == 0.0:
        return p1, 0.0
    return p1 - p2 / c2, p2 / c2


@torch.no_grad()
def res_multistep(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    cfg_pp: bool = False,
    name: str = "res_multistep",
) -> torch.Tensor:
    """The shared loop: each step goes down to sigma_down (the ancestral split with ``eta``), then
    adds sigma_up of fresh noise; the first step and a step to sigma_down = 0 are Euler steps.
    ComfyUI draws the noise on every step to sigma_next > 0, also at eta = 0."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    old_den: torch.Tensor | None = None
    old_down = 0.0
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den, unc = call_with_uncond(denoiser, x, s) if cfg_pp else _plain(denoiser, x, s)
        down, up = ancestral_step(s, sn, eta)
        report(callback, i, n, x, den, s, sn)
        if down == 0.0 or old_den is None:
            if cfg_pp:
                x = den + ((x - unc) / s) * down
            else:
                x = x + ((x - den) / s) * (down - s)
        else:
            lam, lam_old, lam_next, lam_prev = (-math.log(v) for v in (s, old_down, down, sig[i - 1]))
            h = lam_next - lam
            b1, b2 = _res_coefficients(h, (lam_prev - lam_old) / h)
            if cfg_pp:
                x = x + (den - unc)
            x = x * math.exp(-h) + (unc * b1 + old_den * b2) * h
        if sn > 0:
            x = add_noise(x, noise, name, s, sn, s_noise * up)
        old_den = unc
        old_down = down
    return x


# The four variants ComfyUI lists are the shared loop with fixed settings (ComfyUI draws noise at scale
# 0 for the non-ancestral ones: eta = 0 keeps that draw order).
sample_res_multistep = partial(res_multistep, eta=0.0, name="res_multistep")
sample_res_multistep_cfg_pp = partial(res_multistep, eta=0.0, cfg_pp=True, name="res_multistep_cfg_pp")
sample_res_multistep_ancestral = partial(res_multistep, name="res_multistep_ancestral")
sample_res_multistep_ancestral_cfg_pp = partial(
    res_multistep, cfg_pp=True, name="res_multistep_ancestral_cfg_pp"
)


@torch.no_grad()
def sample_gradient_estimation(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    ge_gamma: float = 2.0,
    cfg_pp: bool = False,
) -> torch.Tensor:
    """Euler steps plus (gamma − 1)·(d_i − d_{i−1})·dt from the second step on; the last step to
    sigma = 0 returns the x0 estimate. With CFG++ d comes from the unconditional estimate and the
    Euler part is D_cfg + sigma_next·d."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    old_d: torch.Tensor | None = None
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den, unc = call_with_uncond(denoiser, x, s) if cfg_pp else _plain(denoiser, x, s)
        d = (x - unc) / s
        report(callback, i, n, x, den, s, sn)
        dt = sn - s
        if sn == 0.0:
            x = den
        else:
            x = den + d * sn if cfg_pp else x + d * dt
            if old_d is not None:
                x = x + (d - old_d) * ((ge_gamma - 1.0) * dt)
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    ge_gamma: float = 2.0,
) -> torch.Tensor:
    return sample_gradient_estimation(denoiser, x, sigmas, callback=callback, ge_gamma=ge_gamma, cfg_pp=True)
