"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator",
arXiv:2204.13902), the "tAB" variant ComfyUI runs as ``deis``: a multistep exponential integrator
whose weights integrate the Lagrange polynomials through the previous derivatives against the
VP-SDE's kernel, numerically in the VP time t.

Following ComfyUI, the sigmas are mapped to VP times t with the VP schedule fitted to EDM's range
(sigma_min = 0.002, sigma_max = 80, epsilon_s = 1e-3) whatever the model's range, and each weight
is a 10 000-point Riemann sum over [t_i, t_{i+1}].
"""

from __future__ import annotations

import math

import torch

from ..noise import NoiseSource
from ._common import Denoiser, StepCallback, as_floats, call, report, to_d


def _vp_params(eps_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: float = 80.0) -> tuple[float, float]:
    """(beta_min, beta_d) of the VP schedule with sigma(eps_s) = sigma_min and sigma(1) = sigma_max."""
    lmin, lmax = math.log(sigma_min**2 + 1), math.log(sigma_max**2 + 1)
    beta_d = 2 * (lmin / eps_s - lmax) / (eps_s - 1)
    return lmax - 0.5 * beta_d, beta_d


def sigma_to_vp_t(sig: list[float]) -> list[float]:
    """VP time of each sigma: the inverse of sigma(t)² = exp(beta_d·t²/2 + beta_min·t) − 1."""
    beta_min, beta_d = _vp_params()
    return [(math.sqrt(beta_min**2 + 2 * beta_d * math.log(s * s + 1)) - beta_min) / beta_d for s in sig]


def deis_coefficients(sig: list[float], max_order: int, points: int = 10_000) -> list[list[float]]:
    """Per step i, the weights of d_i, d_{i−1}, ... (empty for first-order steps):
    ∫_{t_i}^{t_{i+1}} k(tau)·L_j(tau) dtau with k = −½·(d log alpha/dtau)/sqrt(alpha(1 − alpha)),
    log alpha(tau) = −½·tau²·beta_d − tau·beta_min, L_j the Lagrange basis through t_i, t_{i−1}, ...
    The sum runs over ``points`` equally spaced nodes including both ends, times (t_{i+1} − t_i)/points."""
    beta_min, beta_d = _vp_params()
    ts = sigma_to_vp_t(sig)
    out: list[list[float]] = []
    for i in range(len(ts) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            out.append([])
            continue
        t0, t1 = ts[i], ts[i + 1]
        taus = torch.linspace(t0, t1, points, dtype=torch.float64)
        alpha = torch.exp(-0.5 * taus**2 * beta_d - taus * beta_min)
        dlog = -taus * beta_d - beta_min
        # At t = 0 (sigma = 0) alpha = 1 and the kernel is infinite; such a step is first order
        # in the sampler, so its (inf) weights are never used.
        kernel = -0.5 * dlog / torch.sqrt(alpha * (1 - alpha))
        nodes = [ts[i - k] for k in range(order)]
        row = []
        for j in range(order):
            poly = torch.ones_like(taus)
            for k, tk in enumerate(nodes):
                if k != j:
                    poly = poly * (taus - tk) / (nodes[j] - tk)
            row.append(float((kernel * poly).sum() * ((t1 - t0) / points)))
        out.append(row)
    return out


@torch.no_grad()
def sample_deis(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    max_order: int = 3,
) -> torch.Tensor:
    """DEIS-tAB of order min(max_order, step + 1): x_next = x + sum_j C_ij·d_{i−j}; the first step
    and a step to sigma = 0 are Euler steps."""
    if not 1 <= max_order <= 4:
        raise ValueError(f"deis max_order must be 1..4, got {max_order}")
    sig = as_floats(sigmas)
    n = len(sig) - 1
    coeffs = deis_coefficients(sig, max_order)
    hist: list[torch.Tensor] = []
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        d = to_d(x, s, den)
        order = 1 if sn <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + d * (sn - s)
        else:
            row = coeffs[i]
            acc = d * row[0]
            for k, w in enumerate(row[1:order]):
                acc = acc + hist[-1 - k] * w
            x = x + acc
        hist.append(d)
        if len(hist) > max_order - 1:
            hist.pop(0)
    return x
