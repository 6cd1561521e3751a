"""Stochastic exponential solvers in half-log-SNR time, with ComfyUI's update rules:

* er_sde: the extended reverse-time SDE solver "VP ER-SDE-Solver-3" (Cui et al. 2023,
  arXiv:2309.06169) with ComfyUI's default noise scale function f(l) = l·(e^{l^0.3} + 10) in
  l = sigma/alpha, stages 2 and 3 integrated by 200-point Riemann sums;
* seeds_2 / seeds_3: SEEDS-2/-3, stochastic explicit exponential derivative-free solvers in data
  prediction (Gonzalez et al. 2023, arXiv:2305.14267), eta scaling the injected noise.

lambda = log(alpha/sigma) is −log sigma for eps/v models and −logit(sigma) for flow models (alpha =
1 − sigma); on a flow schedule starting at sigma = 1 the first sigma is moved just below 1 so lambda
is finite, as ComfyUI does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..noise import NoiseSource
from ._common import Denoiser, StepCallback, add_noise, as_floats, call, report, require_noise
from .cfg_pp import half_log_snr


def _sigma_of_lambda(lam: float, ms: Any) -> float:
    if getattr(ms, "prediction", None) == "flow":
        return 1.0 / (1.0 + math.exp(lam))
    return math.exp(-lam)


def snr_sigmas(sigmas: torch.Tensor, ms: Any) -> list[float]:
    """The schedule as floats, with a flow model's sigma >= 1 at the start replaced by the sigma at
    1e-4 of the way down (ComfyUI's ``offset_first_sigma_for_snr``)."""
    sig = as_floats(sigmas)
    if len(sig) > 1 and getattr(ms, "prediction", None) == "flow" and sig[0] >= 1:
        sig[0] = float(ms.percent_to_sigma(1e-4))
    return sig


def _er_scaler(v: float) -> float:
    """ComfyUI's default ER-SDE noise scale function f(l) = l·(e^{l^0.3} + 10)."""
    return v * (math.exp(v**0.3) + 10.0)


def _er_scaler_t(v: torch.Tensor) -> torch.Tensor:
    return v * (torch.exp(v**0.3) + 10.0)


@torch.no_grad()
def sample_er_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    s_noise: float = 1.0,
    max_stage: int = 3,
    noise_scaler: Callable[[Any], Any] | None = None,
) -> torch.Tensor:
    """ER-SDE-Solver of up to ``max_stage`` stages (1: Euler-type, 2 and 3 add first and second
    differences of the x0 estimates in l = sigma/alpha). ``noise_scaler`` replaces the noise scale
    function f(l) (ComfyUI's SamplerER_SDE passes l^(eta + 1) for its reverse-time SDE and ODE types);
    it is applied to floats and to float64 tensors."""
    scale_f, scale_t = (_er_scaler, _er_scaler_t) if noise_scaler is None else (noise_scaler, noise_scaler)
    ms = getattr(denoiser, "model_sampling", None)
    sig = snr_sigmas(sigmas, ms)
    n = len(sig) - 1
    er = [math.exp(-half_log_snr(s, ms)) if s > 0 else 0.0 for s in sig]
    idx = torch.arange(0, 200, dtype=torch.float64)
    old_den: torch.Tensor | None = None
    old_dd: torch.Tensor | None = None
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        stage = min(max_stage, i + 1)
        if sn == 0.0:
            x = den
        else:
            ls, lt = er[i], er[i + 1]
            a_s, a_t = s / ls, sn / lt
            r = scale_f(lt) / scale_f(ls)
            x = x * (a_t / a_s * r) + den * (a_t * (1 - r))
            if stage >= 2 and old_den is not None:
                dt = lt - ls
                step = -dt / 200.0
                pos = lt + idx * step
                scaled = scale_t(pos)
                s_int = float((1 / scaled).sum()) * step
                dd = (den - old_den) / (ls - er[i - 1])
                x = x + dd * (a_t * (dt + s_int * scale_f(lt)))
                if stage >= 3 and old_dd is not None:
                    s_u = float(((pos - ls) / scaled).sum()) * step
                    du = (dd - old_dd) / ((ls - er[i - 2]) / 2)
                    x = x + du * (a_t * (dt**2 / 2 + s_u * scale_f(lt)))
                old_dd = dd
            if s_noise > 0:
                var = lt**2 - ls**2 * r**2
                x = add_noise(
                    x, noise, "er_sde", s, sn, a_t * s_noise * (math.sqrt(var) if var >= 0 else 0.0)
                )
        old_den = den
    return x


def _seeds_setup(denoiser: Denoiser, sigmas: torch.Tensor) -> tuple[Any, list[float]]:
    ms = getattr(denoiser, "model_sampling", None)
    return ms, snr_sigmas(sigmas, ms)


def _phi1(h: float) -> float:
    return math.expm1(h)


def _phi2(h: float) -> float:
    return (math.expm1(h) - h) / h


@torch.no_grad()
def sample_seeds_2(
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
    """SEEDS-2: a stage at lambda + r·h, then the full step with the blended x0 estimate
    D + (D_2 − D)/(2r); the two stages' noise is correlated as one SDE path."""
    ms, sig = _seeds_setup(denoiser, sigmas)
    n = len(sig) - 1
    inject = eta > 0 and s_noise > 0
    fac = 1 / (2 * r)
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        if sn == 0.0:
            x = den
            continue
        lam_s, lam_t = half_log_snr(s, ms), half_log_snr(sn, ms)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = lam_s + r * (lam_t - lam_s)
        s_1 = _sigma_of_lambda(lam_1, ms)
        a_1, a_t = s_1 * math.exp(lam_1), sn * math.exp(lam_t)
        x2 = x * (s_1 / s * math.exp(-r * h * eta)) - den * (a_1 * _phi1(-r * h_eta))
        sde = torch.zeros_like(x)
        if inject:
            sde = _draw(noise, "seeds_2", s, s_1) * math.sqrt(-math.expm1(-2 * r * h * eta))
            x2 = x2 + sde * (s_1 * s_noise)
        den2 = call(denoiser, x2, s_1)
        den_d = den + (den2 - den) * fac
        x = x * (sn / s * math.exp(-h * eta)) - den_d * (a_t * _phi1(-h_eta))
        if inject:
            seg = (r - 1) * h * eta
            sde = sde * math.exp(seg) + _draw(noise, "seeds_2", s_1, sn) * math.sqrt(-math.expm1(2 * seg))
            x = x + sde * (sn * s_noise)
    return x


def _draw(noise: NoiseSource | None, name: str, s: float, sn: float) -> torch.Tensor:
    return require_noise(noise, name)(s, sn)


@torch.no_grad()
def sample_seeds_3(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r_1: float = 1.0 / 3,
    r_2: float = 2.0 / 3,
) -> torch.Tensor:
    """SEEDS-3: stages at lambda + r_1·h and lambda + r_2·h, then the full step; third order for
    the deterministic part (eta = 0)."""
    ms, sig = _seeds_setup(denoiser, sigmas)
    n = len(sig) - 1
    inject = eta > 0 and s_noise > 0
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        if sn == 0.0:
            x = den
            continue
        lam_s, lam_t = half_log_snr(s, ms), half_log_snr(sn, ms)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = lam_s + r_1 * h, lam_s + r_2 * h
        s_1, s_2 = _sigma_of_lambda(lam_1, ms), _sigma_of_lambda(lam_2, ms)
        a_1, a_2, a_t = s_1 * math.exp(lam_1), s_2 * math.exp(lam_2), sn * math.exp(lam_t)
        x2 = x * (s_1 / s * math.exp(-r_1 * h * eta)) - den * (a_1 * _phi1(-r_1 * h_eta))
        sde = torch.zeros_like(x)
        if inject:
            sde = _draw(noise, "seeds_3", s, s_1) * math.sqrt(-math.expm1(-2 * r_1 * h * eta))
            x2 = x2 + sde * (s_1 * s_noise)
        den2 = call(denoiser, x2, s_1)
        a32 = r_2 / r_1 * _phi2(-r_2 * h_eta)
        a31 = _phi1(-r_2 * h_eta) - a32
        x3 = x * (s_2 / s * math.exp(-r_2 * h * eta)) - (den * a31 + den2 * a32) * a_2
        if inject:
            seg = (r_1 - r_2) * h * eta
            sde = sde * math.exp(seg) + _draw(noise, "seeds_3", s_1, s_2) * math.sqrt(-math.expm1(2 * seg))
            x3 = x3 + sde * (s_2 * s_noise)
        den3 = call(denoiser, x3, s_2)
        b3 = _phi2(-h_eta) / r_2
        b1 = _phi1(-h_eta) - b3
        x = x * (sn / s * math.exp(-h * eta)) - (den * b1 + den3 * b3) * a_t
        if inject:
            seg = (r_2 - 1) * h * eta
            sde = sde * math.exp(seg) + _draw(noise, "seeds_3", s_2, sn) * math.sqrt(-math.expm1(2 * seg))
            x = x + sde * (sn * s_noise)
    return x
