"""SA-Solver, the stochastic Adams predictor-corrector of Xue et al. 2023 ("SA-Solver: Stochastic
Adams Solver for Fast Sampling of Diffusion Models", NeurIPS 2023, arXiv:2309.05019), in data
prediction, with ComfyUI's defaults: predictor order 3, corrector order 4, stochasticity tau = 1
for sigmas between the model's 20 % and 80 % points (0 elsewhere), lower orders near the end.

With lambda = log(alpha/sigma) and tau the stochastic strength, one step is
x_t = (sigma_t/sigma_s)·e^{−tau²h}·x_s + sum_i b_i·D_i (+ sigma_t·sqrt(1 − e^{−2tau²h})·z),
where b_i = alpha_t·∫ e^{−(1+tau²)(lambda_t − l)}·(1 + tau²)·L_i(l) dl over [lambda_s, lambda_t]
and L_i is the Lagrange basis through the history's lambdas (eqs. 15 and 18). ``sa_solver_pece``
re-evaluates the model at the corrected state (Predict-Evaluate-Correct-Evaluate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..noise import NoiseSource
from ._common import Denoiser, StepCallback, as_floats, call, report, require_noise
from .cfg_pp import half_log_snr
from .seeds import snr_sigmas

TauFn = Callable[[float], float]


def exponential_moments(s: float, t: float, order: int, tau: float) -> list[float]:
    """J_p = (1 + tau²)·∫_s^t e^{(1+tau²)(l − t)}·l^p dl for p < order, by the integration-by-parts
    recursion J_p = (t^p − s^p·e^{−(1+tau²)(t − s)}) − p/(1 + tau²)·J_{p−1}."""
    c = 1 + tau**2
    decay = math.exp(-c * (t - s))
    out: list[float] = []
    for p in range(order):
        j = t**p - s**p * decay
        if p:
            j -= p / c * out[-1]
        out.append(j)
    return out


def stochastic_adams_coefficients(
    sigma_t: float,
    lambdas: list[float],
    lam_s: float,
    lam_t: float,
    tau: float,
    *,
    simple_order_2: bool = False,
    corrector: bool = False,
) -> list[float]:
    """b_i for the x0 estimates at ``lambdas`` (oldest first): alpha_t times the solution of
    sum_i lambda_i^p·a_i = J_p (the moments of the Lagrange basis)."""
    k = len(lambdas)
    a_t = sigma_t * math.exp(lam_t)
    if simple_order_2 and k == 2:
        c, h = 1 + tau**2, lam_t - lam_s
        if corrector:
            b1 = a_t * (0.5 * c * h)
            return [a_t * -math.expm1(-h * c) - b1, b1]
        b2 = a_t * (0.5 * c * h**2) / (lambdas[-2] - lam_s)
        return [b2, a_t * -math.expm1(-h * c) - b2]
    moments = torch.tensor(exponential_moments(lam_s, lam_t, k, tau), dtype=torch.float64)
    vander = torch.tensor([[lam**p for lam in lambdas] for p in range(k)], dtype=torch.float64)
    return [a_t * float(v) for v in torch.linalg.solve(vander, moments)]


def default_tau(model_sampling: Any, eta: float = 1.0) -> TauFn:
    """tau = eta between the model's sigmas at 20 % and 80 % of the schedule, 0 outside (ComfyUI's
    default interval). Without a model sampling (a bare denoiser) tau = eta everywhere."""
    if model_sampling is None:
        return lambda sigma: eta
    hi, lo = float(model_sampling.percent_to_sigma(0.2)), float(model_sampling.percent_to_sigma(0.8))
    return lambda sigma: eta if (eta > 0 and hi >= sigma >= lo) else 0.0


def _weighted(coeffs: list[float], preds: list[torch.Tensor]) -> torch.Tensor:
    acc = preds[0] * coeffs[0]
    for c, p in zip(coeffs[1:], preds[1:], strict=True):
        acc = acc + p * c
    return acc


@torch.no_grad()
def sample_sa_solver(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    tau_func: TauFn | None = None,
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    simple_order_2: bool = False,
) -> torch.Tensor:
    """SA-Solver: each step corrects the previous prediction with the new x0 estimate, then predicts
    the next state; the final step to sigma = 0 returns the x0 estimate."""
    if len(sigmas) <= 1:
        return x
    ms = getattr(denoiser, "model_sampling", None)
    sig = snr_sigmas(sigmas, ms)
    lam = [half_log_snr(s, ms) if s > 0 else math.inf for s in sig]
    tau_fn = tau_func or default_tau(ms)
    max_order = max(predictor_order, corrector_order)
    n = len(sig) - 1
    lower_to_end = as_floats(sigmas)[-1] == 0.0
    x_pred = x
    h = tau = 0.0
    step_noise: torch.Tensor | None = None
    preds: list[torch.Tensor] = []
    for i in range(n):
        den = call(denoiser, x_pred, sig[i])
        report(callback, i, n, x_pred, den, sig[i], sig[i + 1])
        preds = (preds + [den])[-max_order:]
        p_order = min(predictor_order, len(preds))
        no_corr = i == 0 or (sig[i + 1] == 0 and not use_pece)
        c_order = 0 if no_corr else min(corrector_order, len(preds))
        if lower_to_end:
            p_order = min(p_order, n - 1 - i)
            c_order = min(c_order, n - i)
        if c_order == 0:
            x = x_pred
        else:
            b = stochastic_adams_coefficients(
                sig[i],
                lam[i - c_order + 1 : i + 1],
                lam[i - 1],
                lam[i],
                tau,
                simple_order_2=simple_order_2,
                corrector=True,
            )
            x = x * (sig[i] / sig[i - 1] * math.exp(-(tau**2) * h)) + _weighted(b, preds[-c_order:])
            if step_noise is not None:
                x = x + step_noise
            if use_pece:
                den = call(denoiser, x, sig[i])
                preds[-1] = den
        if sig[i + 1] == 0:
            x = den
            continue
        tau = tau_fn(sig[i + 1])
        b = stochastic_adams_coefficients(
            sig[i + 1], lam[i - p_order + 1 : i + 1], lam[i], lam[i + 1], tau, simple_order_2=simple_order_2
        )
        h = lam[i + 1] - lam[i]
        x_pred = x * (sig[i + 1] / sig[i] * math.exp(-(tau**2) * h)) + _weighted(b, preds[-p_order:])
        step_noise = None
        if tau > 0 and s_noise > 0:
            z = require_noise(noise, "sa_solver")(sig[i], sig[i + 1])
            step_noise = z * (sig[i + 1] * math.sqrt(-math.expm1(-2 * tau**2 * h)) * s_noise)
            x_pred = x_pred + step_noise
    return x


@torch.no_grad()
def sample_sa_solver_pece(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    tau_func: TauFn | None = None,
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    simple_order_2: bool = False,
) -> torch.Tensor:
    """SA-Solver in PECE mode: one extra model evaluation per step, at the corrected state."""
    return sample_sa_solver(
        denoiser,
        x,
        sigmas,
        noise=noise,
        callback=callback,
        tau_func=tau_func,
        s_noise=s_noise,
        predictor_order=predictor_order,
        corrector_order=corrector_order,
        use_pece=True,
        simple_order_2=simple_order_2,
    )
