"""heunpp2, ipndm and ipndm_v: explicit ODE solvers in sigma on dx/dsigma = (x − D)/sigma, with
ComfyUI's update rules.

ipndm is the improved pseudo-numerical method of Zhang & Chen 2023 ("Fast Sampling of Diffusion
Models with Exponential Integrator", §4 "iPNDM"): Adams-Bashforth with fixed-step weights of order
up to 4, warmed up from order 1 with the lower-order formulas. ipndm_v uses the variable-step
Adams-Bashforth weights for the actual sigma spacing (Zhou et al. 2024, "Fast ODE-based Sampling
for Diffusion Models in Around 5 Steps"). heunpp2 ("Heun++") blends the derivatives at sigma_i,
sigma_{i+1} and sigma_{i+2} with weights proportional to the sigmas.
"""

from __future__ import annotations

import torch

from ..noise import NoiseSource
from ._common import Denoiser, StepCallback, as_floats, call, churn, report, to_d


@torch.no_grad()
def sample_heunpp2(
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
    """Heun++: d' = w1·d_i + w2·d_{i+1} + w3·d_{i+2} (w_k = sigma_k/(3·sigma_0), w1 = 1 − w2 − w3)
    from a two-stage Euler lookahead; Heun-type with weights sigma_{i+1}/(2·sigma_0) for the step
    before the last, and plain Euler for the step that reaches the last sigma."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    s_end = sig[-1]
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
            name="heunpp2",
        )
        den = call(denoiser, x, s_hat)
        d = to_d(x, s_hat, den)
        report(callback, i, n, x, den, s, sn)
        dt = sn - s_hat
        if sn == s_end:
            x = x + d * dt
            continue
        x2 = x + d * dt
        d2 = to_d(x2, sn, call(denoiser, x2, sn))
        if sig[i + 2] == s_end:
            w2 = sn / (2.0 * sig[0])
            x = x + (d * (1.0 - w2) + d2 * w2) * dt
        else:
            snn = sig[i + 2]
            x3 = x2 + d2 * (snn - sn)
            d3 = to_d(x3, snn, call(denoiser, x3, snn))
            w2, w3 = sn / (3.0 * sig[0]), snn / (3.0 * sig[0])
            x = x + (d * (1.0 - w2 - w3) + d2 * w2 + d3 * w3) * dt
    return x


# Fixed-step Adams-Bashforth weights, newest derivative first (order 1..4).
_AB = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ipndm_v_weights(sig: list[float], i: int, order: int) -> tuple[float, ...]:
    """Variable-step Adams-Bashforth weights (newest first) for the step sig[i] → sig[i+1] using the
    derivatives at sig[i], sig[i−1], ... (ComfyUI's ipndm_v coefficient formulas)."""
    if order == 1:
        return (1.0,)
    h = sig[i + 1] - sig[i]
    h1 = sig[i] - sig[i - 1]
    if order == 2:
        return ((2 + h / h1) / 2, -(h / h1) / 2)
    h2 = sig[i - 1] - sig[i - 2]
    t1 = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return (
            (2 + h / h1) / 2 + t1,
            -(h / h1) / 2 - (1 + h1 / h2) * t1,
            t1 * h1 / h2,
        )
    h3 = sig[i - 2] - sig[i - 3]
    t2 = ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) * (
        (h * (h + h1) * (h + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return (
        (2 + h / h1) / 2 + t1 + t2,
        -(h / h1) / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2,
        t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2,
        -t2 * q * h1 / h2,
    )


def _sample_ipndm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None,
    max_order: int,
    variable: bool,
) -> torch.Tensor:
    if not 1 <= max_order <= 4:
        raise ValueError(f"ipndm max_order must be 1..4, got {max_order}")
    sig = as_floats(sigmas)
    n = len(sig) - 1
    hist: list[torch.Tensor] = []  # previous derivatives, newest last
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        d = to_d(x, s, den)
        order = min(max_order, i + 1)
        if sn == 0.0:
            x = den
        else:
            ws = ipndm_v_weights(sig, i, order) if variable else _AB[order]
            acc = d * ws[0]
            for k, w in enumerate(ws[1:]):
                acc = acc + hist[-1 - k] * w
            x = x + acc * (sn - s)
        hist.append(d)
        if len(hist) > max_order - 1:
            hist.pop(0)
    return x


@torch.no_grad()
def sample_ipndm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    max_order: int = 4,
) -> torch.Tensor:
    """iPNDM: fixed-step Adams-Bashforth weights of order min(max_order, step + 1); the step to
    sigma = 0 returns the x0 estimate."""
    return _sample_ipndm(denoiser, x, sigmas, callback, max_order, variable=False)


@torch.no_grad()
def sample_ipndm_v(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    max_order: int = 4,
) -> torch.Tensor:
    """iPNDM with variable-step weights for the schedule's actual spacing."""
    return _sample_ipndm(denoiser, x, sigmas, callback, max_order, variable=True)
