"""Linear multistep samplers: lms and UniPC (uni_pc, uni_pc_bh2)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..noise import NoiseSource
from ._common import Denoiser, StepCallback, as_floats, call, report, to_d


def lms_coefficient(sig: list[float], i: int, order: int, j: int) -> float:
    """∫ over [sig[i], sig[i+1]] of the Lagrange basis polynomial that is 1 at sig[i−j] and 0 at the
    other sig[i−k], k < order. Integrated exactly (a polynomial of degree < 4 needs no quadrature)."""
    nodes = [sig[i - k] for k in range(order)]
    others = [t for k, t in enumerate(nodes) if k != j]
    denom = 1.0
    for t in others:
        denom *= nodes[j] - t
    antider = np.polyint(np.poly(others) if others else np.array([1.0]))
    return float((np.polyval(antider, sig[i + 1]) - np.polyval(antider, sig[i])) / denom)


@torch.no_grad()
def sample_lms(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep (Adams–Bashforth with variable steps) on the probability-flow ODE in sigma,
    as k-diffusion's ``sample_lms`` (Karras et al. 2022 setting; PNDM/LMS as in Liu et al. 2022)."""
    sig = as_floats(sigmas)
    n = len(sig) - 1
    ds: list[torch.Tensor] = []
    for i in range(n):
        s, sn = sig[i], sig[i + 1]
        den = call(denoiser, x, s)
        report(callback, i, n, x, den, s, sn)
        ds.append(to_d(x, s, den))
        if len(ds) > order:
            ds.pop(0)
        if sn == 0.0:
            # The last step to sigma 0 is a plain denoising step (as k-diffusion and ComfyUI): the
            # polynomial extrapolation would amplify a short previous step (e.g. linear_quadratic).
            x = den
            continue
        cur = min(i + 1, order)
        # Summed first, then added: the same rounding as ComfyUI's update.
        x = x + sum(ds[-1 - j] * lms_coefficient(sig, i, cur, j) for j in range(cur))
    return x


def _unipc_update(
    denoiser: Denoiser,
    x: torch.Tensor,
    m_hist: list[torch.Tensor],
    s_hist: list[float],
    s_t: float,
    order: int,
    use_corrector: bool,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniPC step with data prediction (Zhao et al. 2023, Algorithms 2 and 3 / "B(h)" variants),
    written in VE variables: x_vp = alpha·x_ve, so the alpha factors of the paper cancel."""
    s0, m0 = s_hist[-1], m_hist[-1]
    if s_t == 0.0:
        # Data-prediction limit at sigma = 0 (h → ∞): the first-order update returns the x0 estimate.
        # (ComfyUI substitutes sigma = 0.001 instead; lower_order_final makes this step first order.)
        return m0, None
    h = math.log(s0) - math.log(s_t)  # lambda_t − lambda_0 with lambda = −log sigma
    if h == 0.0:  # a repeated sigma: nothing to integrate
        return x, None
    rks: list[float] = []
    d1s: list[torch.Tensor] = []
    for k in range(1, order):
        rk = (math.log(s0) - math.log(s_hist[-(k + 1)])) / h
        rks.append(rk)
        d1s.append((m_hist[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    fact = 1
    r_rows: list[list[float]] = []
    b: list[float] = []
    for k in range(1, order + 1):
        r_rows.append([rk ** (k - 1) for rk in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    r_mat = np.array(r_rows, dtype=np.float64)
    b_vec = np.array(b, dtype=np.float64)

    x_t_ = (s_t / s0) * x - h_phi_1 * m0
    x_t = x_t_
    if d1s:
        rhos_p = [0.5] if order == 2 else list(np.linalg.solve(r_mat[:-1, :-1], b_vec[:-1]))
        pred = sum(float(r) * d for r, d in zip(rhos_p, d1s, strict=True))
        x_t = x_t_ - b_h * pred
    if not use_corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else list(np.linalg.solve(r_mat, b_vec))
    m_t = call(denoiser, x_t, s_t)
    corr = m_t - m0
    res = float(rhos_c[-1]) * corr
    for r, d in zip(rhos_c[:-1], d1s, strict=True):
        res = res + float(r) * d
    return x_t_ - b_h * res, m_t


def _sample_unipc(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None,
    variant: str,
) -> torch.Tensor:
    sig = as_floats(sigmas)
    n = len(sig) - 1
    if n < 1:
        return x
    order = max(1, min(3, n - 1))
    m = call(denoiser, x, sig[0])
    report(callback, 0, n, x, m, sig[0], sig[1])
    m_hist, s_hist = [m], [sig[0]]
    for step in range(1, n + 1):
        # Warm-up with increasing order, then fixed order; the final steps lower the order again
        # ("lower_order_final", which stabilises few-step sampling).
        step_order = min(step, order, n + 1 - step)
        use_corr = step < n
        x, m_t = _unipc_update(denoiser, x, m_hist, s_hist, sig[step], step_order, use_corr, variant)
        if step == n:
            break
        # UniC reuses the model value at the *predicted* x_t as the next history entry (one NFE/step).
        m = m_t if m_t is not None else call(denoiser, x, sig[step])
        report(callback, step, n, x, m, sig[step], sig[step + 1])
        m_hist.append(m)
        s_hist.append(sig[step])
        if len(m_hist) > order:
            m_hist.pop(0)
            s_hist.pop(0)
    return x


@torch.no_grad()
def sample_uni_pc(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """UniPC multistep predictor-corrector, order up to 3, B(h) = h ("bh1") (Zhao et al. 2023,
    "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models")."""
    return _sample_unipc(denoiser, x, sigmas, callback, "bh1")


@torch.no_grad()
def sample_uni_pc_bh2(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """UniPC with B(h) = e^h − 1 ("bh2", Zhao et al. 2023, recommended for guided sampling)."""
    return _sample_unipc(denoiser, x, sigmas, callback, "bh2")
