"""The samplers and schedulers added for ComfyUI's full KSampler lists, on the analytic Gaussian toy.

Data x0 ~ N(mu, s²) elementwise; the exact denoiser is D(x, sigma) = mu + s²/(s² + sigma²)·(x − mu)
and the probability-flow ODE moves x to mu + sqrt((s² + sigma²)/(s² + sigma_T²))·(x_T − mu). A
deterministic sampler must land on that endpoint (its x0 estimate at the last positive sigma when it
ends with a denoising step); a stochastic one must produce N(mu, s²) samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.guidance import CFGDenoiser, InpaintDenoiser
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from engine.diffusion.sampling.registry import default_sampler_registry, default_scheduler_registry
from engine.diffusion.sampling.samplers.cfg_pp import call_with_uncond
from engine.diffusion.sampling.samplers.sa_solver import exponential_moments, stochastic_adams_coefficients
from engine.diffusion.sampling.schedulers import (
    exponential_sigmas,
    karras_sigmas,
    kl_optimal_sigmas,
    linear_quadratic,
)

MU, S = 0.5, 0.8
SMAX, SMIN = 14.6, 0.03
REFERENCE = Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "comfyui-object_info.json"


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sg = sigma.view(-1, *([1] * (x.ndim - 1)))
    return MU + S * S / (S * S + sg * sg) * (x - MU)


def start(z: torch.Tensor, sigma_t: float) -> torch.Tensor:
    return MU + z * math.sqrt(S * S + sigma_t**2)


def ode_solution(x_t: torch.Tensor, sigma_t: float, sigma: float) -> torch.Tensor:
    return MU + math.sqrt((S * S + sigma**2) / (S * S + sigma_t**2)) * (x_t - MU)


def denoised_endpoint(x_t: torch.Tensor, sigma_t: float, sigma_last: float) -> torch.Tensor:
    """Where a sampler that follows the ODE to sigma_last and then returns D lands."""
    return exact_denoiser(ode_solution(x_t, sigma_t, sigma_last), torch.tensor([sigma_last], dtype=x_t.dtype))


@pytest.fixture(scope="module")
def reg():
    return default_sampler_registry()


@pytest.fixture(scope="module")
def z():
    return torch.randn(4, 1, 100, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


NO_TAU = {"tau_func": lambda sigma: 0.0}
# (name, steps, options, tolerance on max |x − endpoint|, endpoint: "ode" = exact ODE at 0,
# "min" = exact ODE at the smallest positive sigma (dpm_fast/dpm_adaptive stop there))
DETERMINISTIC = [
    ("euler_cfg_pp", 200, {}, 0.03, "ode"),
    ("heunpp2", 200, {}, 0.03, "ode"),
    ("dpm_fast", 30, {}, 0.003, "min"),
    ("dpm_adaptive", 10, {"rtol": 1e-4, "atol": 1e-5}, 0.005, "min"),
    ("dpmpp_2m_cfg_pp", 30, {}, 0.03, "ode"),
    ("ipndm", 30, {}, 0.01, "ode"),
    ("ipndm_v", 30, {}, 0.003, "ode"),
    ("deis", 30, {}, 0.01, "ode"),
    ("res_multistep", 30, {}, 0.03, "ode"),
    ("res_multistep_cfg_pp", 30, {}, 0.03, "ode"),
    ("gradient_estimation", 200, {}, 0.03, "ode"),
    ("gradient_estimation_cfg_pp", 200, {}, 0.03, "ode"),
    ("seeds_2", 30, {"eta": 0.0}, 0.03, "ode"),
    ("seeds_3", 30, {"eta": 0.0}, 0.01, "ode"),
    ("sa_solver", 30, NO_TAU, 0.03, "ode"),
    ("sa_solver_pece", 30, NO_TAU, 0.03, "ode"),
    ("euler_ancestral_cfg_pp", 200, {"eta": 0.0}, 0.03, "ode"),
    ("res_multistep_ancestral", 30, {"eta": 0.0}, 0.03, "ode"),
    ("res_multistep_ancestral_cfg_pp", 30, {"eta": 0.0}, 0.03, "ode"),
]


@pytest.mark.parametrize("name,steps,opts,tol,end", DETERMINISTIC, ids=[d[0] for d in DETERMINISTIC])
def test_deterministic_samplers_follow_the_exact_ode(reg, z, name, steps, opts, tol, end):
    sig = karras_sigmas(steps, SMIN, SMAX).double()
    x_t = start(z, SMAX)
    spec = reg.get(name)
    out = spec(exact_denoiser, x_t, sig, noise=spec.make_noise(x_t, sig, 0), **opts)
    target = ode_solution(x_t, SMAX, SMIN if end == "min" else 0.0)
    err = (out - target).abs().max().item()
    assert err < tol, f"{name}: max error {err:.4f}"


def _orders(reg, z, name: str, opts: dict, *, to_zero: bool, ns=(16, 32, 64, 128)) -> list[float]:
    """log2 error ratios when doubling the steps on a log-uniform grid over [0.1, 10]; with
    ``to_zero`` the grid ends with a denoising step to 0, compared with D at the exact x(0.1)."""
    x_t = start(z[:1, :, :10, :10], 10.0)
    target = denoised_endpoint(x_t, 10.0, 0.1) if to_zero else ode_solution(x_t, 10.0, 0.1)
    errs = []
    for n in ns:
        sig = exponential_sigmas(n, 0.1, 10.0).double()
        sig = sig if to_zero else sig[:-1]
        errs.append((reg.get(name)(exact_denoiser, x_t, sig, **opts) - target).abs().max().item())
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


# (name, options, ends at 0, lowest accepted order over the last two doublings, highest)
ORDERS = [
    ("euler_cfg_pp", {}, False, 0.95, 1.1),
    ("heunpp2", {}, False, 0.95, 1.1),  # Heun++'s sigma-proportional weights vanish as sigma → 0
    ("gradient_estimation", {}, False, 0.9, 1.1),
    ("res_multistep", {}, False, 1.9, 2.2),
    ("dpmpp_2m_cfg_pp", {}, False, 1.9, 2.2),
    ("ipndm", {}, False, 1.9, 2.2),  # fixed-step weights on a geometric grid: second order
    ("ipndm_v", {}, False, 2.4, 4.5),  # variable-step AB4 after an Euler start
    ("deis", {}, False, 2.6, 3.2),
    ("seeds_2", {"eta": 0.0}, False, 1.9, 2.2),
    ("seeds_3", {"eta": 0.0}, False, 2.8, 3.2),
    ("sa_solver", NO_TAU, True, 1.9, 2.3),
    ("sa_solver_pece", NO_TAU, True, 1.85, 2.3),
]


@pytest.mark.parametrize("name,opts,to_zero,lo,hi", ORDERS, ids=[o[0] for o in ORDERS])
def test_convergence_orders(reg, z, name, opts, to_zero, lo, hi):
    orders = _orders(reg, z, name, opts, to_zero=to_zero)
    assert all(lo < o < hi for o in orders[-2:]), orders


def test_dpm_adaptive_error_shrinks_with_the_tolerance(reg, z):
    x_t = start(z[:1], 10.0)
    sig = exponential_sigmas(10, 0.1, 10.0).double()
    target = ode_solution(x_t, 10.0, 0.1)
    errs = [
        (reg.get("dpm_adaptive")(exact_denoiser, x_t, sig, rtol=r, atol=r / 10) - target).abs().max().item()
        for r in (0.05, 1e-3, 1e-4)
    ]
    assert errs[0] > 5 * errs[1] > 25 * errs[2], errs


STOCHASTIC = [
    ("euler_ancestral_cfg_pp", 300, {}),
    ("res_multistep_ancestral", 60, {}),
    ("res_multistep_ancestral_cfg_pp", 60, {}),
    ("er_sde", 60, {}),
    ("seeds_2", 40, {}),
    ("seeds_3", 40, {}),
    ("sa_solver", 40, {}),
    ("sa_solver_pece", 40, {}),
]


@pytest.mark.parametrize("name,steps,opts", STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
def test_stochastic_samplers_reach_the_data_distribution(reg, z, name, steps, opts):
    spec = reg.get(name)
    sig = karras_sigmas(steps, SMIN, SMAX).float()
    x_t = start(z, SMAX)
    out = spec(exact_denoiser, x_t, sig, noise=spec.make_noise(x_t, sig, seed=123), **opts)
    # Fresh noise was injected: the result is not the ODE endpoint ...
    assert (out - ode_solution(x_t, SMAX, 0.0)).abs().mean().item() > 0.05
    # ... but it is distributed like the data (40 000 samples, std error of the mean 0.004).
    assert abs(out.mean().item() - MU) < 0.02, out.mean().item()
    assert abs(out.std().item() - S) < 0.03, out.std().item()


def test_stochastic_samplers_are_seeded(reg, z):
    x_t = start(z[:1], SMAX)
    sig = karras_sigmas(8, SMIN, SMAX)
    for name in ("er_sde", "seeds_2", "sa_solver", "res_multistep_ancestral", "euler_ancestral_cfg_pp"):
        spec = reg.get(name)
        a = spec(exact_denoiser, x_t, sig, noise=spec.make_noise(x_t, sig, 7))
        b = spec(exact_denoiser, x_t, sig, noise=spec.make_noise(x_t, sig, 7))
        c = spec(exact_denoiser, x_t, sig, noise=spec.make_noise(x_t, sig, 8))
        assert torch.equal(a, b) and not torch.allclose(a, c), name


def test_callbacks_report_every_step(reg):
    x = torch.zeros(1, 1, 2, 2)
    sig = karras_sigmas(6, SMIN, SMAX)
    for name in (
        "heunpp2",
        "ipndm",
        "deis",
        "res_multistep",
        "er_sde",
        "seeds_3",
        "sa_solver_pece",
        "dpm_fast",
    ):
        spec = reg.get(name)
        seen: list[tuple[int, int]] = []
        spec(
            exact_denoiser,
            x,
            sig,
            noise=spec.make_noise(x, sig, 0),
            callback=lambda info, seen=seen: seen.append((info.index, info.total)),
        )
        expected = 6 // 3 + 1 if name == "dpm_fast" else 6  # dpm_fast reports its m solver steps
        assert seen == [(i, 6) for i in range(expected)], (name, seen)


# ---- CFG++ and the guider's unconditional prediction ------------------------------------------


class GuidedToy:
    """A guided denoiser with a known unconditional part: D_cfg = D(x) + g, D_uncond = D(x) − g."""

    def __init__(self, g: float) -> None:
        self.g = g

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return exact_denoiser(x, sigma) + self.g

    def with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = exact_denoiser(x, sigma)
        return d + self.g, d - self.g


def test_cfg_pp_samplers_step_along_the_unconditional_estimate(reg):
    x = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)
    sig = torch.tensor([4.0, 2.0, 0.0], dtype=torch.float64)
    g = 0.25
    d0 = exact_denoiser(x, sig[:1])
    x1 = (d0 + g) + (x - (d0 - g)) / 4.0 * 2.0  # CFG++ Euler: D_cfg + sigma_next·(x − D_uncond)/sigma
    d1 = exact_denoiser(x1, sig[1:2])
    out = reg.get("euler_cfg_pp")(GuidedToy(g), x, sig)
    torch.testing.assert_close(out, d1 + g)
    # The plain Euler step with the same guided estimate differs by sigma_next/sigma·2g at step 1.
    plain_x1 = x + (x - (d0 + g)) / 4.0 * (2.0 - 4.0)
    assert not torch.allclose(plain_x1, x1)


def test_dpmpp_2s_ancestral_cfg_pp_full_step_uses_the_midpoint_uncond(reg):
    """ComfyUI's dpmpp_2s_ancestral_cfg_pp reads its post-CFG capture after the midpoint call, so the
    full step is shifted by D_cfg(x) − D_uncond(x_mid): even unguided (D_uncond = D) it is not
    dpmpp_2s_ancestral and does not follow the ODE. We reproduce that (same pictures as ComfyUI);
    this is the one-step arithmetic, eta = 0, on the exact toy denoiser."""
    x = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)
    sig = torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
    den0 = exact_denoiser(x, sig[:1])
    h = math.log(4.0)
    x_mid = 0.5 * x - math.expm1(-h / 2) * den0
    den_mid = exact_denoiser(x_mid, torch.tensor([2.0], dtype=torch.float64))
    x1 = 0.25 * (x + den0 - den_mid) - math.expm1(-h) * den_mid
    want = exact_denoiser(x1, sig[1:2])
    out = reg.get("dpmpp_2s_ancestral_cfg_pp")(exact_denoiser, x, sig, eta=0.0)
    torch.testing.assert_close(out, want)
    plain = reg.get("dpmpp_2s_ancestral")(exact_denoiser, x, sig, eta=0.0)
    assert not torch.allclose(out, plain)


def test_cfg_denoiser_with_uncond_evaluates_the_negative_even_at_cfg_1(pointwise_unet, make_cond):
    unet = pointwise_unet()
    model = DiffusionModel(unet, ModelSamplingDiscrete("eps"))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([2.0])
    pos, neg = [make_cond(0.3)], [make_cond(-0.2)]
    want_c = model.apply(x, sigma, context=pos[0][0])
    want_u = model.apply(x, sigma, context=neg[0][0])
    for cfg in (1.0, 3.0):
        guider = CFGDenoiser(model, pos, neg, cfg, like=x)
        den, unc = guider.with_uncond(x, sigma)
        torch.testing.assert_close(unc, want_u)
        torch.testing.assert_close(den, want_u + (want_c - want_u) * cfg)
        torch.testing.assert_close(guider(x, sigma), den)
    plain = CFGDenoiser(model, pos, None, 1.0, like=x)
    den, unc = plain.with_uncond(x, sigma)
    assert torch.equal(unc, torch.zeros_like(x))  # no negative: ComfyUI's empty side predicts 0
    torch.testing.assert_close(den, want_c)


def test_inpaint_denoiser_forwards_the_unblended_uncond(pointwise_unet, make_cond):
    model = DiffusionModel(pointwise_unet(), ModelSamplingDiscrete("eps"))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([1.5])
    guider = CFGDenoiser(model, [make_cond(0.3)], [make_cond(-0.2)], 2.0, like=x)
    mask = torch.zeros_like(x)
    mask[..., :4] = 1.0
    lat = torch.full_like(x, 0.7)
    inp = InpaintDenoiser(
        guider, model.model_sampling, latent_image=lat, noise=torch.zeros_like(x), mask=mask
    )
    den, unc = call_with_uncond(inp, x, 1.5)
    torch.testing.assert_close(den, inp(x, sigma))
    want_den, want_unc = guider.with_uncond(inp.blend(x, sigma), sigma)
    torch.testing.assert_close(unc, want_unc)
    torch.testing.assert_close(den, want_den * mask + lat * (1 - mask))


def test_plain_denoiser_counts_as_unguided(reg, z):
    x_t = start(z[:1, :, :8, :8], SMAX)
    sig = karras_sigmas(12, SMIN, SMAX).double()
    for pp, plain in (("euler_cfg_pp", "euler"), ("dpmpp_2m_cfg_pp", "dpmpp_2m")):
        torch.testing.assert_close(
            reg.get(pp)(exact_denoiser, x_t, sig), reg.get(plain)(exact_denoiser, x_t, sig)
        )


# ---- SA-Solver coefficients ---------------------------------------------------------------------


def test_sa_solver_moments_and_coefficients_closed_form():
    s, t, tau = 0.3, 1.1, 0.7
    c, h = 1 + tau**2, t - s
    j = exponential_moments(s, t, 3, tau)
    # J_p = c·∫_s^t e^{c(l − t)} l^p dl, by numerical quadrature (midpoint, 20 000 points)
    ls = [s + (k + 0.5) * h / 20_000 for k in range(20_000)]
    for p in range(3):
        quad = c * sum(math.exp(c * (v - t)) * v**p for v in ls) * h / 20_000
        assert j[p] == pytest.approx(quad, rel=1e-6)
    # One-point coefficient: alpha_t·(1 − e^{−c h}) (the exponential-integrator first-order weight).
    (b,) = stochastic_adams_coefficients(2.0, [s], s, t, tau)
    assert b == pytest.approx(2.0 * math.exp(t) * -math.expm1(-c * h))
    # Weights of any order integrate constants exactly: they sum to the one-point weight.
    assert sum(stochastic_adams_coefficients(2.0, [-0.4, 0.0, s], s, t, tau)) == pytest.approx(b)


# ---- schedulers ---------------------------------------------------------------------------------


def test_linear_quadratic_closed_form():
    ms = ModelSamplingDiscrete("eps")
    steps, thr = 10, 0.025
    got = linear_quadratic(ms, steps)
    lin, quad = 5, 5
    # f rises linearly to thr at i = lin, then quadratically with matching slope to 1 at i = steps.
    a = (1 - thr - thr / lin * quad) / quad**2  # f(i) = thr + thr/lin·(i − lin) + a·(i − lin)²
    f = [i * thr / lin for i in range(lin)] + [
        thr + thr / lin * (i - lin) + a * (i - lin) ** 2 for i in range(lin, 11)
    ]
    want = torch.tensor([(1 - v) * ms.sigma_max for v in f])
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    assert float(got[-1]) == pytest.approx(0.0, abs=1e-5) and len(got) == steps + 1
    torch.testing.assert_close(linear_quadratic(ms, 1), torch.tensor([ms.sigma_max, 0.0]))


def test_kl_optimal_closed_form():
    got = kl_optimal_sigmas(5, 0.03, 14.6)
    want = [math.tan(math.atan(14.6) + k / 4 * (math.atan(0.03) - math.atan(14.6))) for k in range(5)] + [0.0]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))
    sched = default_scheduler_registry().sigmas("kl_optimal", ModelSamplingDiscrete("eps"), 3)
    assert len(sched) == 4 and float(sched[-1]) == 0.0
    assert torch.equal(kl_optimal_sigmas(1, 0.03, 14.6), torch.tensor([14.6, 0.0]))


# ---- the KSampler lists against ComfyUI's ------------------------------------------------------


# ComfyUI 0.3.64's KSampler choices (../shared/reference/comfyui-object_info.json), kept here so the
# check runs in checkouts without the reference file; a test below ties them to the file.
COMFY_SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
COMFY_SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
]  # fmt: skip


def _check_against(ours: list[str], ref: list[str]) -> None:
    """Fails on any name we share with ComfyUI that is out of its order, then lists the missing ones."""
    common = [n for n in ours if n in ref]
    assert common == [n for n in ref if n in ours], "names we share with ComfyUI are out of ComfyUI's order"
    assert ours[: len(common)] == common, "built-in names must come first, plugins after"
    missing = [n for n in ref if n not in ours]
    assert not missing, f"ComfyUI lists names we lack: {missing}"


def test_sampler_and_scheduler_lists_match_comfyui():
    _check_against(default_sampler_registry().names(), COMFY_SAMPLERS)
    _check_against(default_scheduler_registry().names(), COMFY_SCHEDULERS)
    assert default_sampler_registry().names() == COMFY_SAMPLERS
    assert default_scheduler_registry().names() == COMFY_SCHEDULERS


def test_order_check_catches_a_swap_and_a_gap():
    with pytest.raises(AssertionError, match="out of ComfyUI's order"):
        _check_against(["euler_cfg_pp", "euler"], COMFY_SAMPLERS)
    with pytest.raises(AssertionError, match=r"lack: \['sgm_uniform'"):
        _check_against([n for n in COMFY_SCHEDULERS if n != "sgm_uniform"], COMFY_SCHEDULERS)


def test_lists_are_the_reference_files():
    if not REFERENCE.exists():
        pytest.skip("the ComfyUI /object_info reference file is not next to this checkout")
    req = json.loads(REFERENCE.read_text())["KSampler"]["input"]["required"]
    assert req["sampler_name"][0] == COMFY_SAMPLERS
    assert req["scheduler"][0] == COMFY_SCHEDULERS


# ---- through KSampler with the real guider ------------------------------------------------------

NEW_SAMPLERS = [n for n in COMFY_SAMPLERS if n not in ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral",
    "lms", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ddim", "uni_pc",
    "uni_pc_bh2")]  # fmt: skip


@pytest.mark.parametrize("name", NEW_SAMPLERS)
def test_ksampler_runs_each_new_sampler(pointwise_unet, make_cond, name, regs):
    from engine.diffusion.sampling.ksampler import sample

    model = DiffusionModel(pointwise_unet(), ModelSamplingDiscrete("eps"))
    latent = torch.zeros(1, 4, 8, 8)
    kw = {"seed": 3, "noise_mask": torch.ones(1, 8, 8)} if "cfg_pp" in name else {"seed": 3}
    out = sample(
        model, None, 4, 3.0, name, "karras", [make_cond(0.2)], [make_cond(-0.1)], latent, **kw, **regs
    )
    again = sample(
        model, None, 4, 3.0, name, "karras", [make_cond(0.2)], [make_cond(-0.1)], latent, **kw, **regs
    )
    assert out.shape == latent.shape and bool(torch.isfinite(out).all())
    assert torch.equal(out, again)


def test_ksampler_cfg_pp_at_cfg_1_still_evaluates_the_negative(pointwise_unet, make_cond, regs):
    from engine.diffusion.sampling.ksampler import sample

    unet = pointwise_unet()
    model = DiffusionModel(unet, ModelSamplingDiscrete("eps"))
    latent = torch.zeros(1, 4, 8, 8)
    args = (None, 3, 1.0)
    conds = ([make_cond(0.2)], [make_cond(-0.1)], latent)
    plain = sample(model, *args, "euler", "normal", *conds, seed=3, **regs)
    assert all(c["x"].shape[0] == 1 for c in unet.calls)  # cfg = 1: the positive side only
    unet.calls.clear()
    pp = sample(model, *args, "euler_cfg_pp", "normal", *conds, seed=3, **regs)
    assert all(c["x"].shape[0] == 2 for c in unet.calls)  # positive and negative in one batch
    assert not torch.allclose(pp, plain)


@pytest.mark.parametrize("scheduler", ["linear_quadratic", "kl_optimal"])
def test_new_schedulers_are_descending_and_end_at_zero(scheduler):
    ms = ModelSamplingDiscrete("eps")
    sig = default_scheduler_registry().sigmas(scheduler, ms, 12)
    assert len(sig) == 13 and float(sig[-1]) == 0.0
    assert bool((sig[:-1] > sig[1:]).all())
    assert float(sig[0]) == pytest.approx(ms.sigma_max, rel=1e-5)


class FlowToy:
    """A denoiser on a rectified-flow schedule (x = (1 − sigma)·x0 + sigma·n): D = 0.7·(1 − sigma)·x + 0.1."""

    def __init__(self) -> None:
        from engine.diffusion.sampling.model_sampling import ModelSamplingFlow

        self.model_sampling = ModelSamplingFlow(3.0)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return 0.7 * (1 - sigma.view(-1, 1, 1, 1)) * x + 0.1


def test_flow_schedule_from_sigma_1(reg):
    """At sigma = 1 alpha = 0: euler_ancestral_cfg_pp's ancestral split puts all of sigma_next into
    fresh noise (x = alpha_next·D + sigma_next·z, ComfyUI's result), and the half-log-SNR samplers
    move the first sigma just below 1 instead of dividing by zero."""
    from engine.diffusion.sampling.noise import GaussianNoise

    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    sig = torch.tensor([1.0, 0.5])
    out = reg.get("euler_ancestral_cfg_pp")(FlowToy(), x, sig, noise=GaussianNoise.like(x, 9))
    z = GaussianNoise.like(x, 9)(1.0, 0.5)
    torch.testing.assert_close(out, 0.5 * FlowToy()(x, sig[:1]) + 0.5 * z)
    sig = FlowToy().model_sampling.sigma(torch.linspace(1000, 0, 6)).float()
    for name in ("euler_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver"):
        spec = reg.get(name)
        assert bool(torch.isfinite(spec(FlowToy(), x, sig, noise=spec.make_noise(x, sig, 1))).all()), name
