"""Euler-type samplers: euler, euler_ancestral, heun, dpm_2, dpm_2_ancestral, plus ddim, ddpm and lcm
(one-step-at-a-time variants of the same loop)."""

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
    call,
    churn,
    report,
    require_noise,
    to_d,
)


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x − D)/sigma, with optional
    "churn" (Karras et al. 2022, "Elucidating the Design Space...", Algorithm 2 with S_churn; the
    default s_churn = 0 is the plain deterministic Euler sampler)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        x, s_hat = churn(
            x,
            s,
            sn,
            n,
            s_churn=s_churn,
            s_tmin=s_tmin,
            s_tmax=s_tmax,
            s_noise=s_noise,
            noise=noise,
            name="euler",
        )
        den = call(denoiser, x, s_hat)
        report(callback, i, n, x, den, s, sn)
        x = x + to_d(x, s_hat, den) * (sn - s_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral Euler: an Euler step down to sigma_down, then fresh noise of std sigma_up (the DDPM
    ancestral sampler of Ho et al. 2020 in the VE/EDM formulation of Karras et al. 2022).

    Noise is drawn on every step with sigma_down > 0 (even when eta = 0 makes sigma_up 0), as ComfyUI
    draws it, so a seed's later draws line up with ComfyUI's."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        down, up = ancestral_step(s, sn, eta)
        report(callback, i, n, x, den, s, sn)
        if down == 0.0:
            x = den
        else:
            x = x + to_d(x, s, den) * (down - s)
            x = add_noise(x, noise, "euler_ancestral", s, sn, s_noise * up)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2): an Euler predictor and a
    trapezoidal corrector; the last step to sigma = 0 is a plain Euler step."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        x, s_hat = churn(
            x,
            s,
            sn,
            n,
            s_churn=s_churn,
            s_tmin=s_tmin,
            s_tmax=s_tmax,
            s_noise=s_noise,
            noise=noise,
            name="heun",
        )
        den = call(denoiser, x, s_hat)
        report(callback, i, n, x, den, s, sn)
        d = to_d(x, s_hat, den)
        dt = sn - s_hat
        if sn == 0.0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, sn, call(denoiser, x2, sn))
            x = x + (d + d2) * (0.5 * dt)
    return x


@torch.no_grad()
def sample_dpm_2(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Second-order midpoint sampler "DPM-2" (Karras et al. 2022, inspired by DPM-Solver-2 of Lu et
    al. 2022): the derivative is re-evaluated at the log-midpoint sigma_mid = sqrt(sigma·sigma_next)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        x, s_hat = churn(
            x,
            s,
            sn,
            n,
            s_churn=s_churn,
            s_tmin=s_tmin,
            s_tmax=s_tmax,
            s_noise=s_noise,
            noise=noise,
            name="dpm_2",
        )
        den = call(denoiser, x, s_hat)
        report(callback, i, n, x, den, s, sn)
        d = to_d(x, s_hat, den)
        if sn == 0.0:
            x = x + d * (sn - s_hat)
        else:
            s_mid = math.exp(0.5 * (math.log(s_hat) + math.log(sn)))
            x2 = x + d * (s_mid - s_hat)
            d2 = to_d(x2, s_mid, call(denoiser, x2, s_mid))
            x = x + d2 * (sn - s_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-2 down to sigma_down followed by ancestral noise (Karras et al. 2022 / k-diffusion); a step
    down to sigma_down = 0 is a plain Euler step without noise."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        down, up = ancestral_step(s, sn, eta)
        report(callback, i, n, x, den, s, sn)
        d = to_d(x, s, den)
        if down == 0.0:
            x = x + d * (down - s)
        else:
            s_mid = math.exp(0.5 * (math.log(s) + math.log(down)))
            x2 = x + d * (s_mid - s)
            d2 = to_d(x2, s_mid, call(denoiser, x2, s_mid))
            x = x + d2 * (down - s)
            x = add_noise(x, noise, "dpm_2_ancestral", s, sn, s_noise * up)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eta = 0).

    In the VE variable x = x_vp·sqrt(1 + sigma²) the DDIM update x_{t−1} = sqrt(ᾱ_{t−1})·x̂0 +
    sqrt(1 − ᾱ_{t−1})·ε̂ is exactly one Euler step of the probability-flow ODE (Karras et al. 2022,
    §3 and Appendix B.4), so this is Euler; ComfyUI's "ddim" is the same."""
    return sample_euler(denoiser, x, sigmas, noise=noise, callback=callback)


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2 with the posterior variance beta-tilde),
    stepping between the schedule's noise levels rather than adjacent training timesteps.

    In VP variables x_vp = x/sqrt(1 + sigma²), ᾱ = 1/(1 + sigma²) and a = ᾱ/ᾱ_next: the posterior mean
    is (x_vp − (1 − a)·eps/sqrt(1 − ᾱ))/sqrt(a), plus sqrt((1 − a)(1 − ᾱ_next)/(1 − ᾱ)) of fresh noise
    unless the next level is 0. Noise is drawn once per step to sigma_next > 0 (ComfyUI's order)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        eps = (x - den) / s
        ab, ab_next = 1.0 / (s * s + 1.0), 1.0 / (sn * sn + 1.0)
        a = ab / ab_next
        x = (x / math.sqrt(1.0 + s * s) - eps * ((1.0 - a) / math.sqrt(1.0 - ab))) * math.sqrt(1.0 / a)
        if sn > 0:
            std = math.sqrt((1.0 - a) * (1.0 - ab_next) / (1.0 - ab))
            x = (x + require_noise(noise, "ddpm")(s, sn) * std) * math.sqrt(1.0 + sn * sn)
    return x


@torch.no_grad()
def sample_lcm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 1): jump to the x0
    estimate, then re-noise it to the next noise level with fresh noise.

    Re-noising uses the denoiser's ``model_sampling.noise_scaling`` when it has one (so flow models
    re-noise as (1 − s)·x0 + s·n) and the VE rule x0 + s·n otherwise."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    ms: Any = getattr(denoiser, "model_sampling", None)
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        x = den
        if sn > 0:
            z = require_noise(noise, "lcm")(s, sn)
            if ms is not None:
                x = ms.noise_scaling(torch.tensor(sn, dtype=x.dtype), z, x)
            else:
                x = x + z * sn
    return x
