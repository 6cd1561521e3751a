"""DPM-Solver++ family (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", arXiv:2211.01095), in the VE/EDM variables of k-diffusion.

With lambda = −log sigma (the half log-SNR in VE form) and h = lambda_next − lambda, the exact
solution of the data-prediction ODE is x_next = (sigma_next/sigma)·x + (1 − e^{−h})·x0-integral;
the solvers differ in how they approximate the x0 term. The SDE variants add the noise of the
reverse SDE (Lu et al. 2022, §4 "DPM-Solver++(2M) SDE"; 3M SDE is k-diffusion's third-order
extension); ``eta`` scales the stochasticity.
"""

from __future__ import annotations

import math

import torch

from ..noise import NoiseSource
from ._common import (
    Denoiser,
    StepCallback,
    add_noise,
    ancestral_step,
    as_floats,
    call,
    report,
    require_noise,
    to_d,
)


def _lam(sigma: float) -> float:
    return -math.log(sigma)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2S) (single-step, second order, midpoint r = 1/2; Lu et al. 2022, Algorithm 1)
    down to sigma_down, followed by ancestral noise."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        down, up = ancestral_step(s, sn, eta)
        report(callback, i, n, x, den, s, sn)
        if down == 0.0:
            x = x + to_d(x, s, den) * (down - s)
        else:
            h = _lam(down) - _lam(s)
            s_mid = math.exp(-(_lam(s) + 0.5 * h))
            x2 = (s_mid / s) * x - math.expm1(-0.5 * h) * den
            den2 = call(denoiser, x2, s_mid)
            x = (down / s) * x - math.expm1(-h) * den2
        if sn > 0:  # drawn even when sigma_up = 0 (eta = 0), as ComfyUI draws it
            x = add_noise(x, noise, "dpmpp_2s_ancestral", s, sn, s_noise * up)
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> torch.Tensor:
    """DPM-Solver++ stochastic single-step second order ("DPM++ SDE", k-diffusion): two stages at
    lambda and lambda + r·h, each an ancestral DPM-Solver++(1) step whose noise comes from a
    Brownian path so that the two stages' noise is consistent (Lu et al. 2022; Karras et al. 2022)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    fac = 1.0 / (2.0 * r)
    stochastic = eta > 0 and s_noise > 0
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        if sn == 0.0:
            x = den
            continue
        lam = _lam(s)
        s_mid = _mid_sigma(s, sn, r, sigmas.dtype)
        # stage 1: to the intermediate noise level
        down, up = ancestral_step(s, s_mid, eta)
        x2 = (down / s) * x - math.expm1(lam - _lam(down)) * den
        if stochastic:
            x2 = x2 + require_noise(noise, "dpmpp_sde")(s, s_mid) * (s_noise * up)
        den2 = call(denoiser, x2, s_mid)
        # stage 2: the full step with the blended x0 estimate
        down, up = ancestral_step(s, sn, eta)
        den_d = (1.0 - fac) * den + fac * den2
        x = (down / s) * x - math.expm1(lam - _lam(down)) * den_d
        if stochastic:
            x = x + require_noise(noise, "dpmpp_sde")(s, sn) * (s_noise * up)
    return x


def _mid_sigma(s: float, sn: float, r: float, dtype: torch.dtype) -> float:
    """sigma at lambda + r·h, computed in the sigmas' own dtype with ComfyUI's operations: the
    Brownian tree is queried at this level, and only the identical float gives identical noise."""
    lam_s = torch.tensor(s, dtype=dtype).log().neg()
    lam_t = torch.tensor(sn, dtype=dtype).log().neg()
    return float((lam_s + r * (lam_t - lam_s)).neg().exp())


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order (Lu et al. 2022, Algorithm 2): the x0 term is
    extrapolated linearly in lambda from the current and previous estimates,
    D = (1 + 1/(2r))·D_i − 1/(2r)·D_{i−1} with r = h_{i−1}/h_i; first and last steps are first order."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    old: torch.Tensor | None = None
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        if sn == 0.0:
            x = den
        else:
            h = _lam(sn) - _lam(s)
            if old is None:
                den_d = den
            else:
                r = (_lam(s) - _lam(sig[i - 1])) / h
                den_d = den * (1.0 + 1.0 / (2.0 * r)) - old * (1.0 / (2.0 * r))
            x = (sn / s) * x - math.expm1(-h) * den_d
        old = den
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, §4, eq. for the SDE solver; k-diffusion's "midpoint"
    and "heun" second-order corrections). With eta = 0 it reduces to an ODE solver."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"dpmpp_2m_sde solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    sig = as_floats(sigmas)
    n = len(sig) - 1
    old: torch.Tensor | None = None
    h_last: float | None = None
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        if sn == 0.0:
            x = den
            old, h_last = den, None
            continue
        h = _lam(sn) - _lam(s)
        eta_h = eta * h
        x = (sn / s) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * den
        if old is not None and h_last is not None:
            r = h_last / h
            phi = -math.expm1(-h - eta_h)
            if solver_type == "heun":
                x = x + (phi / (-h - eta_h) + 1.0) * (1.0 / r) * (den - old)
            else:
                x = x + 0.5 * phi * (1.0 / r) * (den - old)
        if eta > 0 and s_noise > 0:
            x = x + require_noise(noise, "dpmpp_2m_sde")(s, sn) * (
                sn * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
            )
        old, h_last = den, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep (k-diffusion, following the exponential
    integrator expansion of Lu et al. 2022 with phi_2/phi_3 terms); lower order while history fills."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    d1_prev: torch.Tensor | None = None
    d2_prev: torch.Tensor | None = None
    h1: float | None = None
    h2: float | None = None
    h: float | None = None
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        if sn == 0.0:
            x = den
        else:
            h = _lam(sn) - _lam(s)
            h_eta = h * (eta + 1.0)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * den
            if h2 is not None and h1 is not None and d1_prev is not None and d2_prev is not None:
                r0, r1 = h1 / h, h2 / h
                d1_0 = (den - d1_prev) / r0
                d1_1 = (d1_prev - d2_prev) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi2 = math.expm1(-h_eta) / h_eta + 1.0
                phi3 = phi2 / h_eta - 0.5
                x = x + phi2 * d1 - phi3 * d2
            elif h1 is not None and d1_prev is not None:
                r = h1 / h
                phi2 = math.expm1(-h_eta) / h_eta + 1.0
                x = x + phi2 * ((den - d1_prev) / r)
            if eta > 0 and s_noise > 0:
                x = x + require_noise(noise, "dpmpp_3m_sde")(s, sn) * (
                    sn * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                )
        d1_prev, d2_prev = den, d1_prev
        h1, h2 = h, h1
    return x
