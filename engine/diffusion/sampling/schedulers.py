"""Noise schedules: descending sigma sequences ending in 0 (length steps + 1 unless noted).

Names and definitions follow ComfyUI's KSampler scheduler list; each function documents the formula
it implements. A schedule maps a step count to sigmas for a given ``ModelSampling``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .model_sampling import ModelSampling

SchedulerFn = Callable[[ModelSampling, int], torch.Tensor]


def _with_zero(sigmas: list[float] | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
    return torch.cat([t, t.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n−1)·(smin^(1/rho) − smax^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas equally spaced in log sigma from sigma_max to sigma_min."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def karras(ms: ModelSampling, steps: int) -> torch.Tensor:
    return karras_sigmas(steps, ms.sigma_min, ms.sigma_max)


def exponential(ms: ModelSampling, steps: int) -> torch.Tensor:
    return exponential_sigmas(steps, ms.sigma_min, ms.sigma_max)


def _timestep_uniform(ms: ModelSampling, steps: int, *, sgm: bool) -> torch.Tensor:
    start = float(ms.timestep(torch.tensor(ms.sigma_max)))
    end = float(ms.timestep(torch.tensor(ms.sigma_min)))
    if sgm:
        # SGM (SDXL reference code): steps + 1 uniform timesteps, the last (t = end) dropped.
        ts = torch.linspace(start, end, steps + 1, dtype=torch.float64)[:-1]
    else:
        ts = torch.linspace(start, end, steps, dtype=torch.float64)
    return _with_zero(ms.sigma(ts).double())


def normal(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Timesteps equally spaced from the top (999) to the bottom (0) of the schedule, as sigmas."""
    return _timestep_uniform(ms, steps, sgm=False)


def sgm_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Like ``normal`` but spacing steps + 1 timesteps and dropping the last (SDXL/SGM default)."""
    return _timestep_uniform(ms, steps, sgm=True)


def simple(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every (N/steps)-th entry of the discrete sigma table, from the top: sigmas[-(1 + int(i·N/steps))]."""
    table = ms.sigmas
    stride = len(table) / steps
    return _with_zero([float(table[-(1 + int(i * stride))]) for i in range(steps)])


def ddim_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    """DDIM's "uniform" discretisation (Song et al. 2021): table entries 1, 1+c, 1+2c, ... with
    c = N // steps, reversed, then 0. As in ComfyUI the count can exceed steps + 1 when N is not a
    multiple of steps (e.g. 7 steps give 8 sigmas plus 0)."""
    table = ms.sigmas
    stride = max(len(table) // steps, 1)
    picked = [float(table[i]) for i in range(1, len(table), stride)]
    return torch.tensor(picked[::-1] + [0.0], dtype=torch.float32)


# ---- beta schedule -------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz; Press et al.,
    Numerical Recipes §6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta function I_x(a, b) (the Beta(a, b) CDF)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry
    # I_x(a, b) = 1 − I_{1−x}(b, a) on the other side.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(p: float, a: float, b: float) -> float:
    """Inverse of ``beta_cdf`` by bisection (the CDF is monotone; 200 halvings reach float precision)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if beta_cdf(mid, a, b) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-17:
            break
    return 0.5 * (lo + hi)


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, beta_param: float = 0.6) -> torch.Tensor:
    """Beta schedule (Lee et al. 2024, "Beta Sampling is All You Need"): timesteps at the Beta(α, β)
    quantiles of 1 − i/steps, rounded to table indices; repeated indices are dropped (so the result
    can be shorter than steps + 1)."""
    last = len(ms.sigmas) - 1
    out: list[float] = []
    prev = -1
    for i in range(steps):
        t = round(beta_ppf(1.0 - i / steps, alpha, beta_param) * last)
        if t != prev:
            out.append(float(ms.sigmas[t]))
        prev = t
    return _with_zero(out)


def sd_turbo_sigmas(ms: ModelSampling, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """ComfyUI's SDTurboScheduler: the ADD distillation timesteps 999, 899, ..., 99 (Sauer et al.
    2023), starting 10 − int(10·denoise) entries in, ``steps`` of them, then 0."""
    start = 10 - int(10 * denoise)
    ts = torch.flip(torch.arange(1, 11, dtype=torch.float64) * 100 - 1, (0,))[start : start + steps]
    return _with_zero(ms.sigma(ts).double())


def linear_quadratic(
    ms: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """The linear-quadratic schedule of Mochi (Genmo 2024), in ComfyUI's form: noise levels
    1 − f_i times sigma_max, f rising linearly from 0 to ``threshold_noise`` over the first
    ``linear_steps`` (default steps // 2) steps, then along the quadratic that continues it with
    matching slope and reaches 1 at i = steps. One step is [sigma_max, 0]."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        lin = steps // 2 if linear_steps is None else linear_steps
        quad = steps - lin
        diff = lin - threshold_noise * steps
        qc = diff / (lin * quad**2)
        lc = threshold_noise / lin - 2 * diff / quad**2
        const = qc * lin**2
        f = [i * threshold_noise / lin for i in range(lin)]
        f += [qc * i**2 + lc * i + const for i in range(lin, steps)]
        fractions = [1.0 - v for v in f + [1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * float(ms.sigma_max)


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The KL-optimal schedule (Sabour et al. 2024, "Align Your Steps", eq. 12): sigmas equally
    spaced in arctan(sigma), from sigma_max to sigma_min, then 0. ComfyUI divides by n − 1 and
    returns NaN for one step; here one step is [sigma_max, 0]."""
    ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    sig = torch.tan(ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max))
    return _with_zero(sig)


def kl_optimal(ms: ModelSampling, steps: int) -> torch.Tensor:
    return kl_optimal_sigmas(steps, ms.sigma_min, ms.sigma_max)


def default_scheduler_table() -> dict[str, SchedulerFn]:
    """The built-in schedulers in ComfyUI's KSampler order."""
    return {
        "simple": simple,
        "sgm_uniform": sgm_uniform,
        "karras": karras,
        "exponential": exponential,
        "ddim_uniform": ddim_uniform,
        "beta": beta,
        "normal": normal,
        "linear_quadratic": linear_quadratic,
        "kl_optimal": kl_optimal,
    }


def sigmas_with_denoise(fn: Callable[[int], torch.Tensor], steps: int, denoise: float) -> torch.Tensor:
    """Apply the KSampler ``denoise`` fraction: with denoise < 1 compute a schedule of
    int(steps / denoise) steps and keep its last steps + 1 sigmas (img2img starts part-way down)."""
    if denoise is None or denoise > 0.9999:
        return fn(steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    full = fn(int(steps / denoise))
    return full[-(steps + 1) :]
