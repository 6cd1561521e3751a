"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for
Diffusion Models", arXiv:2406.08070): euler_cfg_pp, euler_ancestral_cfg_pp, dpmpp_2s_ancestral_cfg_pp
and dpmpp_2m_cfg_pp, with ComfyUI's update rules.

CFG++ takes the step's noise direction from the *unconditional* x0 estimate while jumping to the
guided one: x_next = D_cfg + sigma_next·(x − D_uncond)/sigma for Euler. The guider supplies both
through ``with_uncond(x, sigma)`` (``CFGDenoiser``); a denoiser without it is treated as unguided
(D_uncond = D), which turns each sampler into its plain counterpart.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..noise import NoiseSource
from ._common import (
    Denoiser,
    StepCallback,
    add_noise,
    ancestral_step,
    as_floats,
    report,
    sigma_batch,
)


def call_with_uncond(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided, unconditional) x0 estimates at ``sigma``."""
    fn = getattr(denoiser, "with_uncond", None)
    s = sigma_batch(x, sigma)
    if fn is None:
        den = denoiser(x, s)
        return den, den
    out: tuple[torch.Tensor, torch.Tensor] = fn(x, s)
    return out


def half_log_snr(sigma: float, model_sampling: Any) -> float:
    """lambda = log(alpha/sigma): −log sigma in the VE form of eps/v models, −logit(sigma) for
    rectified-flow models (alpha = 1 − sigma), as ComfyUI's ``sigma_to_half_log_snr``."""
    if getattr(model_sampling, "prediction", None) == "flow":
        return math.log1p(-sigma) - math.log(sigma)
    return -math.log(sigma)


def alpha_of(sigma: float, model_sampling: Any) -> float:
    """The signal scale alpha = sigma·e^lambda (1 in VE form, 1 − sigma for flow models)."""
    if getattr(model_sampling, "prediction", None) == "flow":
        return 1.0 - sigma
    return 1.0


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral Euler with CFG++: x = alpha_next·D_cfg + sigma_down·(x − alpha·D_uncond)/sigma plus
    alpha_next·sigma_up of fresh noise, the ancestral split taken on sigma/alpha (DDIM form)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    ms = getattr(denoiser, "model_sampling", None)
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den, unc = call_with_uncond(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        if sn == 0.0:
            x = den
            continue
        a_s, a_t = alpha_of(s, ms), alpha_of(sn, ms)
        d = (x - unc * a_s) / s
        # A flow model at sigma = 1 has alpha = 0: the ratio is infinite, and (as in ComfyUI's tensor
        # arithmetic) the ancestral split then puts all of sigma_next into fresh noise.
        down, up = ancestral_step(s / a_s if a_s > 0 else math.inf, sn / a_t, eta)
        x = den * a_t + d * (a_t * down)
        if eta > 0 and s_noise > 0:
            x = add_noise(x, noise, "euler_ancestral_cfg_pp", s, sn, a_t * s_noise * up)
    return x


@torch.no_grad()
def sample_euler_cfg_pp(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler with CFG++ (the ancestral CFG++ sampler with eta = 0: no noise)."""
    return sample_euler_ancestral_cfg_pp(denoiser, x, sigmas, callback=callback, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2S) ancestral with CFG++: each stage starts from x + (D_cfg − D_uncond), i.e.
    the exponential-integrator step whose noise part uses the unconditional estimate (the full step
    with the D_uncond of the midpoint evaluation, as ComfyUI)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den, unc = call_with_uncond(denoiser, x, s)
        down, up = ancestral_step(s, sn, eta)
        report(callback, i, n, x, den, s, sn)
        if down == 0.0:
            x = den + ((x - unc) / s) * down
        else:
            h = math.log(s) - math.log(down)
            s_mid = math.exp(-(-math.log(s) + 0.5 * h))
            x2 = (x + (den - unc)) * (s_mid / s) - den * math.expm1(-0.5 * h)
            den2, unc2 = call_with_uncond(denoiser, x2, s_mid)
            # ComfyUI's full step shifts x by D_cfg − D_uncond with the *midpoint* call's D_uncond
            # (its hook has been overwritten by then); the same here, for the same pictures.
            x = (x + (den - unc2)) * (down / s) - den2 * math.expm1(-h)
        if sn > 0:
            x = add_noise(x, noise, "dpmpp_2s_ancestral_cfg_pp", s, sn, s_noise * up)
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) with CFG++: x = D_cfg + e^{−h}(x − D_uncond) − (e^{−h} − 1)/(2r)·(D_cfg −
    D_uncond,prev), first order on the first and the last step."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    old_unc: torch.Tensor | None = None
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den, unc = call_with_uncond(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        if sn == 0.0:
            # h = inf: e^{-h} = 0 wipes out both x and the correction term.
            x = den
        else:
            h = math.log(s) - math.log(sn)
            if old_unc is None:
                mix = unc * -math.exp(-h)
            else:
                r = (math.log(sig[i - 1]) - math.log(s)) / h
                mix = unc * -math.exp(-h) - (den - old_unc) * (math.expm1(-h) / (2.0 * r))
            x = den + mix + x * math.exp(-h)
        old_unc = unc
    return x
