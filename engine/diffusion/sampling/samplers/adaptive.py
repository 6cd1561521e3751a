"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps", arXiv:2206.00927) as ComfyUI's ``dpm_fast`` and ``dpm_adaptive``.

Both work in t = lambda = −log sigma on the noise prediction eps = (x − D)/sigma with the
single-step DPM-Solver-1/2/3 updates (the paper's Algorithms 1 and 2 in VE form). Like ComfyUI they
ignore the schedule's interior sigmas: they run from sigmas[0] down to the smallest positive sigma
(and stop there: the result keeps that much noise). ``dpm_fast`` spends len(sigmas) − 1 model
evaluations on equal steps in t (DPM-Solver-fast, §3.4); ``dpm_adaptive`` picks its steps with an
embedded lower-order error estimate and a PID step-size controller (DPM-Solver-12/23, §3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..noise import NoiseSource
from ._common import Denoiser, StepCallback, add_noise, ancestral_step, as_floats, call, report


class _Solver:
    """The DPM-Solver steps, caching eps per stage within one step (as ComfyUI's ``eps_cache``)."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser

    def eps(self, x: torch.Tensor, t: float) -> torch.Tensor:
        s = math.exp(-t)
        return (x - call(self.denoiser, x, s)) / s

    def step(self, x: torch.Tensor, eps: torch.Tensor, t: float, t_next: float, order: int) -> torch.Tensor:
        return self.steps(x, eps, t, t_next, order, 1 / 3 if order == 3 else 1 / 2)[-1]

    def steps(
        self, x: torch.Tensor, eps: torch.Tensor, t: float, t_next: float, order: int, r1: float
    ) -> list[torch.Tensor]:
        """[DPM-Solver-1, -2 (midpoint r1)] for order 2, [-2 (r1 = 1/3), -3] for order 3 (sharing
        their first stage), [-1] for order 1 - the lower one is the adaptive error estimate."""
        h = t_next - t
        sn = math.exp(-t_next)
        first = x - eps * (sn * math.expm1(h))
        if order == 1:
            return [first]
        s1 = t + r1 * h
        u1 = x - eps * (math.exp(-s1) * math.expm1(r1 * h))
        e1 = self.eps(u1, s1) - eps
        second = first - e1 * (sn / (2 * r1) * math.expm1(h))
        if order == 2:
            return [first, second]
        r2 = 2 / 3
        s2 = t + r2 * h
        u2 = x - eps * (math.exp(-s2) * math.expm1(r2 * h))
        u2 = u2 - e1 * (math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1))
        e2 = self.eps(u2, s2) - eps
        third = first - e2 * (sn / r2 * (math.expm1(h) / h - 1))
        return [second, third]

    def noise_split(self, t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
        """(t to step to, sigma of fresh noise): the ancestral split, capped at t_end."""
        if not eta:
            return t_next, 0.0
        down, _ = ancestral_step(math.exp(-t), math.exp(-t_next), eta)
        t_to = min(t_end, -math.log(down))
        return t_to, math.sqrt(max(math.exp(-2 * t_next) - math.exp(-2 * t_to), 0.0))


def _range(sigmas: torch.Tensor) -> tuple[float, float]:
    sig = as_floats(sigmas)
    lo = sig[-1] if sig[-1] != 0 else sig[-2]
    if lo <= 0 or sig[0] <= 0:
        raise ValueError("dpm_fast/dpm_adaptive need positive sigma_min and sigma_max")
    return sig[0], lo


@torch.no_grad()
def sample_dpm_fast(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-fast: nfe = len(sigmas) − 1 evaluations on m = nfe//3 + 1 equal steps in t,
    third order except the last (orders [3, ..., 3, 2, 1] when 3 divides nfe, else [3, ..., nfe % 3])."""
    if len(sigmas) <= 1:
        return x
    smax, smin = _range(sigmas)
    nfe = len(sigmas) - 1
    t_start, t_end = -math.log(smax), -math.log(smin)
    m = nfe // 3 + 1
    ts = torch.linspace(t_start, t_end, m + 1, dtype=torch.float64).tolist()
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    solver = _Solver(denoiser)
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_to, su = solver.noise_split(t, t_next, t_end, eta)
        eps = solver.eps(x, t)
        report(callback, i, nfe, x, x - eps * math.exp(-t), math.exp(-t), math.exp(-t_next))
        x = solver.step(x, eps, t, t_to, order)
        x = add_noise(x, noise, "dpm_fast", math.exp(-t), math.exp(-t_next), su * s_noise)
    return x


@dataclass
class _PID:
    """PID step-size control on the inverse error (Söderlind 2003), ComfyUI's constants."""

    h: float
    b: tuple[float, float, float]
    accept_safety: float
    eps: float = 1e-8
    errs: list[float] = field(default_factory=list)

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b[0] * self.errs[1] ** self.b[1] * self.errs[2] ** self.b[2]
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-12 (order 2) or -23 (order 3) with adaptive steps: a step is accepted when the
    scaled RMS difference of the two embedded solutions is small enough; rejected steps are
    retried with a smaller h. Each attempt costs ``order`` model evaluations."""
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive order must be 2 or 3, got {order}")
    if len(sigmas) <= 1:
        return x
    smax, smin = _range(sigmas)
    total = len(sigmas) - 1
    s, t_end = -math.log(smax), -math.log(smin)
    ctrl_order = 1.5 if eta else order
    coeffs = (
        (pcoeff + icoeff + dcoeff) / ctrl_order,
        -(pcoeff + 2 * dcoeff) / ctrl_order,
        dcoeff / ctrl_order,
    )
    pid = _PID(abs(h_init), coeffs, accept_safety)
    solver = _Solver(denoiser)
    x_prev = x
    attempt = 0
    while s < t_end - 1e-5:
        t = min(t_end, s + pid.h)
        t_to, su = solver.noise_split(s, t, t_end, eta)
        eps = solver.eps(x, s)
        den = x - eps * math.exp(-s)
        low, high = solver.steps(x, eps, s, t_to, order, 1 / 3 if order == 3 else 1 / 2)
        delta = torch.clamp(rtol * torch.maximum(low.abs(), x_prev.abs()), min=atol)
        error = float(torch.linalg.norm((low - high) / delta)) / math.sqrt(x.numel())
        if pid.propose(error):
            x_prev = low
            x = add_noise(high, noise, "dpm_adaptive", math.exp(-s), math.exp(-t), su * s_noise)
            s = t
        report(callback, attempt, total, x, den, math.exp(-s), math.exp(-t))
        attempt += 1
    return x
