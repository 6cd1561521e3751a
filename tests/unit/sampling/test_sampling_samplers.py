"""Samplers on the analytic Gaussian toy problem, noise sources and the registry.

Data x0 ~ N(mu, s²) elementwise. In VE form x = x0 + sigma·n, so x ~ N(mu, s² + sigma²) and
  the exact denoiser (posterior mean) is D(x, sigma) = mu + s²/(s² + sigma²)·(x − mu),
  the probability-flow ODE solution is x(sigma) = mu + sqrt((s² + sigma²)/(s² + sigma_T²))·(x_T − mu),
  and the exact consistency function (for LCM) maps x to x(0) along that ODE.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.diffusion.sampling.noise import GaussianNoise
from engine.diffusion.sampling.registry import SamplerRegistry, SamplerSpec, default_sampler_registry
from engine.diffusion.sampling.samplers.euler import sample_euler
from engine.diffusion.sampling.schedulers import exponential_sigmas, karras_sigmas

MU, S = 0.5, 0.8
SMAX, SMIN = 14.6, 0.03


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sg = sigma.view(-1, *([1] * (x.ndim - 1)))
    return MU + S * S / (S * S + sg * sg) * (x - MU)


def consistency_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sg = sigma.view(-1, *([1] * (x.ndim - 1)))
    return MU + S / torch.sqrt(S * S + sg * sg) * (x - MU)


def start(z: torch.Tensor, sigma_t: float) -> torch.Tensor:
    return MU + z * math.sqrt(S * S + sigma_t**2)


def ode_solution(x_t: torch.Tensor, sigma_t: float, sigma: float) -> torch.Tensor:
    return MU + math.sqrt((S * S + sigma**2) / (S * S + sigma_t**2)) * (x_t - MU)


@pytest.fixture(scope="module")
def reg():
    return default_sampler_registry()


@pytest.fixture(scope="module")
def z():
    return torch.randn(4, 1, 100, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# (name, steps, options, tolerance on max |x − exact ODE endpoint|)
DETERMINISTIC = [
    ("euler", 200, {}, 0.03),
    ("ddim", 200, {}, 0.03),
    ("heun", 30, {}, 0.03),
    ("dpm_2", 30, {}, 0.03),
    ("lms", 30, {}, 0.02),
    ("dpmpp_2m", 30, {}, 0.03),
    ("uni_pc", 30, {}, 0.01),
    ("uni_pc_bh2", 30, {}, 0.01),
    ("dpmpp_2m_sde", 30, {"eta": 0.0}, 0.03),
    ("dpmpp_3m_sde", 30, {"eta": 0.0}, 0.03),
    ("euler_ancestral", 200, {"eta": 0.0}, 0.03),
    ("dpmpp_2s_ancestral", 30, {"eta": 0.0}, 0.03),
]


@pytest.mark.parametrize("name,steps,opts,tol", DETERMINISTIC, ids=[d[0] for d in DETERMINISTIC])
def test_deterministic_samplers_follow_the_exact_ode(reg, z, name, steps, opts, tol):
    sig = karras_sigmas(steps, SMIN, SMAX).double()
    x_t = start(z, SMAX)
    out = reg.get(name)(exact_denoiser, x_t, sig, **opts)
    err = (out - ode_solution(x_t, SMAX, 0.0)).abs().max().item()
    assert err < tol, f"{name}: max error {err:.4f}"
    assert abs(out.mean().item() - MU) < 0.02 and abs(out.std().item() - S) < 0.03


STOCHASTIC = [
    ("euler_ancestral", 300, {}),
    ("dpm_2_ancestral", 60, {}),
    ("dpmpp_2s_ancestral", 60, {}),
    ("dpmpp_sde", 40, {}),
    ("dpmpp_2m_sde", 40, {}),
    ("dpmpp_2m_sde", 40, {"solver_type": "heun"}),
    ("dpmpp_3m_sde", 40, {}),
    ("ddpm", 100, {}),
    ("euler", 200, {"s_churn": 20.0}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,steps,opts", STOCHASTIC, ids=[f"{s[0]}-{i}" for i, s in enumerate(STOCHASTIC)])
def test_stochastic_samplers_reach_the_data_distribution(reg, z, name, steps, opts):
    spec = reg.get(name)
    # float32 sigmas, as sampling uses: the Brownian tree is queried in float32 (ComfyUI's CPU tree)
    sig = karras_sigmas(steps, SMIN, SMAX).float()
    x_t = start(z, SMAX)
    noise = spec.make_noise(x_t, sig, seed=123)
    if noise is None:  # samplers whose churn needs noise but are registered deterministic
        noise = GaussianNoise(x_t.shape, 123, dtype=x_t.dtype)
    out = spec(exact_denoiser, x_t, sig, noise=noise, **opts)
    # The output is not the ODE endpoint (fresh noise was injected) ...
    assert (out - ode_solution(x_t, SMAX, 0.0)).abs().mean().item() > 0.05
    # ... but it is distributed like the data: 40 000 samples, std error of the mean 0.004.
    assert abs(out.mean().item() - MU) < 0.02, out.mean().item()
    assert abs(out.std().item() - S) < 0.03, out.std().item()


def test_lcm_with_exact_consistency_function(reg, z):
    spec = reg.get("lcm")
    sig = torch.tensor([SMAX, 3.0, 0.8, 0.2, 0.0], dtype=torch.float64)
    x_t = start(z, SMAX)
    out = spec(consistency_fn, x_t, sig, noise=spec.make_noise(x_t, sig, seed=5))
    assert abs(out.mean().item() - MU) < 0.02 and abs(out.std().item() - S) < 0.02
    one = spec(consistency_fn, x_t, sig[[0, -1]], noise=None)  # one step needs no noise
    torch.testing.assert_close(one, ode_solution(x_t, SMAX, 0.0))


def _order(reg, z, name: str, ns=(16, 32, 64, 128)) -> list[float]:
    """log2 error ratios when doubling the steps on a fixed [0.1, 10] log-uniform grid (no final
    step to sigma = 0, whose Euler-type special case would dominate)."""
    x_t = start(z[:1, :, :10, :10], 10.0)
    target = ode_solution(x_t, 10.0, 0.1)
    errs = []
    for n in ns:
        sig = exponential_sigmas(n, 0.1, 10.0)[:-1].double()
        errs.append((reg.get(name)(exact_denoiser, x_t, sig) - target).abs().max().item())
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


def test_convergence_orders(reg, z):
    euler = _order(reg, z, "euler")
    heun = _order(reg, z, "heun")
    dpmpp = _order(reg, z, "dpmpp_2m")
    assert all(0.9 < o < 1.15 for o in euler), euler
    assert all(1.85 < o < 2.3 for o in heun), heun
    assert all(1.85 < o < 2.2 for o in dpmpp[-2:]), dpmpp


def test_callback_reports_every_step(reg):
    x = torch.zeros(1, 1, 2, 2)
    sig = karras_sigmas(5, SMIN, SMAX)
    for name in ("euler", "heun", "dpmpp_2m", "uni_pc", "lms", "dpmpp_sde"):
        spec = reg.get(name)
        seen = []
        spec(
            exact_denoiser,
            x,
            sig,
            noise=spec.make_noise(x, sig, 0),
            callback=lambda info, seen=seen: seen.append((info.index, info.total)),
        )
        assert seen == [(i, 5) for i in range(5)], name


def test_stochastic_sampler_without_noise_source_fails_clearly(reg):
    with pytest.raises(ValueError, match="seeded noise source"):
        reg.get("euler_ancestral")(exact_denoiser, torch.zeros(1, 1, 2, 2), karras_sigmas(3, SMIN, SMAX))


def test_sde_sampler_same_seed_identical_different_seed_differs(reg, z):
    spec = reg.get("dpmpp_sde")
    sig = karras_sigmas(8, SMIN, SMAX)
    x = start(z[:1].float(), SMAX)
    a = spec(exact_denoiser, x, sig, noise=spec.make_noise(x, sig, 7))
    b = spec(exact_denoiser, x, sig, noise=spec.make_noise(x, sig, 7))
    c = spec(exact_denoiser, x, sig, noise=spec.make_noise(x, sig, 8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# ---- noise sources ---------------------------------------------------------------------------


def test_gaussian_noise_is_seeded_and_ignores_global_rng():
    a = GaussianNoise((3, 4), 42)
    torch.manual_seed(0)
    xa = [a(1.0, 0.5) for _ in range(2)]
    b = GaussianNoise((3, 4), 42)
    torch.manual_seed(999)
    xb = [b(1.0, 0.5) for _ in range(2)]
    assert torch.equal(xa[0], xb[0]) and torch.equal(xa[1], xb[1])
    assert not torch.equal(xa[0], xa[1])
    assert GaussianNoise((2,), 1, dtype=torch.float16)(1, 0).dtype == torch.float16


# ---- registry --------------------------------------------------------------------------------

COMFY_NAMES = [
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "uni_pc", "uni_pc_bh2", "lcm",
]  # fmt: skip


def test_registry_has_comfy_names_and_accepts_plugins():
    reg = default_sampler_registry()
    assert set(COMFY_NAMES) <= set(reg.names())
    assert default_sampler_registry() is not reg  # built fresh, no global state
    with pytest.raises(ValueError, match="already registered"):
        reg.register(SamplerSpec("euler", sample_euler))
    reg.register(SamplerSpec("my_euler", sample_euler, options=(("s_churn", 0.0),)))
    assert "my_euler" in reg
    with pytest.raises(KeyError, match="unknown sampler 'nope'"):
        reg.get("nope")
    assert SamplerRegistry().names() == []


def test_lms_coefficients_closed_form():
    from engine.diffusion.sampling.samplers.multistep import lms_coefficient

    sig = [10.0, 6.0, 3.5, 1.0]
    assert lms_coefficient(sig, 2, 1, 0) == pytest.approx(1.0 - 3.5)
    t0, t1, b = 3.5, 6.0, 1.0  # order 2 at i = 2: nodes sig[2] (current) and sig[1]
    assert lms_coefficient(sig, 2, 2, 0) == pytest.approx(((b - t1) ** 2 - (t0 - t1) ** 2) / (2 * (t0 - t1)))
    assert lms_coefficient(sig, 2, 2, 1) == pytest.approx(((b - t0) ** 2) / (2 * (t1 - t0)))
    # The weights of any order integrate the constant 1 exactly: they sum to the step length.
    assert sum(lms_coefficient(sig, 3 - 1, 3, j) for j in range(3)) == pytest.approx(1.0 - 3.5)


def test_lms_last_step_to_zero_returns_the_denoised_estimate():
    """ComfyUI's lms ends with a plain denoising step when the next sigma is 0. On a schedule with a
    short step before the last (linear_quadratic's 14.61 -> 14.25 -> 10.50 -> 0) the multistep
    extrapolation instead amplified that step's derivative tenfold (176/255 off ComfyUI's image)."""
    from engine.diffusion.sampling.samplers.multistep import sample_lms

    estimates: list[torch.Tensor] = []

    def recording_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # A denoiser whose estimate is off the exact posterior mean, so extrapolation shows.
        out = exact_denoiser(x, sigma) + 0.3 * torch.sin(3 * x)
        estimates.append(out)
        return out

    sigmas = torch.tensor([14.61, 14.25, 10.50, 0.0])
    x = start(torch.randn(64, generator=torch.Generator().manual_seed(0)), 14.61)
    result = sample_lms(recording_denoiser, x, sigmas)
    assert len(estimates) == 3
    assert torch.equal(result, estimates[-1])
