"""Samplers against diffusers' schedulers (an independent implementation), same sigmas and model.

The model is the exact eps-predictor of the Gaussian toy (data N(mu, s²)); each diffusers loop
feeds it the sigma of the step it is at. Which pairs line up exactly, and why:
* EulerDiscreteScheduler ↔ euler: both integrate dx/dsigma = eps in VE form; we reuse its sigmas.
* HeunDiscreteScheduler ↔ heun: diffusers interleaves each sigma twice (predictor/corrector
  half-steps); the distinct sigmas are our schedule, with a first-order last step in both.
* DDIMScheduler(eta=0, set_alpha_to_one) ↔ ddim: DDIM in x_vp equals Euler in x_ve = x_vp/sqrt(ᾱ)
  on sigma_t = sqrt((1 − ᾱ_t)/ᾱ_t) (Karras et al. 2022, App. B.4), ending at ᾱ = 1, i.e. sigma 0.
* DPMSolverMultistepScheduler(dpmsolver++, order 2, Karras sigmas) ↔ dpmpp_2m: the same multistep
  formula (Lu et al. 2022, Alg. 2); diffusers works in x_vp, so we convert at start and end.
* UniPCMultistepScheduler(order 3, data prediction, lower_order_final) ↔ uni_pc_bh2 / uni_pc:
  same predictor-corrector (Zhao et al. 2023); diffusers applies UniC at the start of the next
  step, we at the end of the current one - the same arithmetic. Its bh1 variant produces NaN on a
  final sigma of 0 (B(h) = -inf times 0), so bh1 is compared on a schedule ending at sigma_min.
LMSDiscreteScheduler needs scipy (not installed), so lms is checked on the analytic toy only.
"""

from __future__ import annotations

import math

import diffusers  # noqa: F401
import pytest
import torch
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from engine.diffusion.sampling.registry import default_sampler_registry  # noqa: E402

pytestmark = pytest.mark.parity

MU, S = 0.3, 0.9
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def denoise(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
    return MU + S * S / (S * S + sigma * sigma) * (x_ve - MU)


def ours_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return denoise(x, float(sigma[0]))


def eps_from_scaled(x_in: torch.Tensor, sigma: float) -> torch.Tensor:
    """The eps a model predicts from its VP-scaled input x_in = x_ve / sqrt(1 + sigma²)."""
    x_ve = x_in * math.sqrt(1 + sigma * sigma)
    return (x_ve - denoise(x_ve, sigma)) / sigma


@pytest.fixture(scope="module")
def reg():
    return default_sampler_registry()


@pytest.fixture
def x_start():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _run_ve_scheduler(sched, x: torch.Tensor) -> torch.Tensor:
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        sigma = float(sched.sigmas[sched.step_index])
        x = sched.step(eps_from_scaled(x_in, sigma), t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [5, 20])
def test_euler_matches_diffusers(reg, x_start, steps):
    sched = EulerDiscreteScheduler(**SD)
    sched.set_timesteps(steps)
    sig = sched.sigmas.double()
    x0 = x_start * float(sig[0])
    ref = _run_ve_scheduler(sched, x0.clone())
    ours = reg.get("euler")(ours_denoiser, x0.clone(), sig)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [4, 12])
def test_heun_matches_diffusers(reg, x_start, steps):
    sched = HeunDiscreteScheduler(**SD)
    sched.set_timesteps(steps)
    sig = torch.unique_consecutive(sched.sigmas).double()
    assert len(sig) == steps + 1
    x0 = x_start * float(sig[0])
    ref = _run_ve_scheduler(sched, x0.clone())
    ours = reg.get("heun")(ours_denoiser, x0.clone(), sig)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_matches_diffusers(reg, x_start, steps):
    sched = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod.double()
    sig = torch.tensor([math.sqrt((1 - ac[t]) / ac[t]) for t in sched.timesteps] + [0.0], dtype=torch.float64)
    x_vp = x_start.clone()
    for t in sched.timesteps:
        sigma = math.sqrt((1 - ac[t]) / ac[t])
        x_vp = sched.step(eps_from_scaled(x_vp, sigma), t, x_vp, eta=0.0).prev_sample
    ours = reg.get("ddim")(ours_denoiser, x_start * math.sqrt(1 + float(sig[0]) ** 2), sig)
    torch.testing.assert_close(ours, x_vp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_matches_diffusers(reg, x_start, steps):
    sched = DPMSolverMultistepScheduler(
        **SD, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )
    sched.set_timesteps(steps)
    sig = sched.sigmas.double()
    assert float(sig[-1]) == 0.0 and len(sig) == steps + 1
    x_vp = x_start.clone()
    for i, t in enumerate(sched.timesteps):
        x_vp = sched.step(eps_from_scaled(x_vp, float(sig[i])), t, x_vp).prev_sample
    ours = reg.get("dpmpp_2m")(ours_denoiser, x_start * math.sqrt(1 + float(sig[0]) ** 2), sig)
    torch.testing.assert_close(ours, x_vp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,steps", [("bh2", 6), ("bh2", 12), ("bh1", 6), ("bh1", 12)])
def test_uni_pc_matches_diffusers(reg, x_start, variant, steps):
    final = "zero" if variant == "bh2" else "sigma_min"
    sched = UniPCMultistepScheduler(
        **SD, solver_order=3, solver_type=variant, predict_x0=True, use_karras_sigmas=True,
        lower_order_final=True, final_sigmas_type=final,
    )  # fmt: skip
    sched.set_timesteps(steps)
    sig = sched.sigmas.double()
    x_vp = x_start.clone()
    for i, t in enumerate(sched.timesteps):
        x_vp = sched.step(eps_from_scaled(x_vp, float(sig[i])), t, x_vp).prev_sample
    name = "uni_pc_bh2" if variant == "bh2" else "uni_pc"
    ours = reg.get(name)(ours_denoiser, x_start * math.sqrt(1 + float(sig[0]) ** 2), sig)
    ref = x_vp * math.sqrt(1 + float(sig[-1]) ** 2)  # back to VE at the final sigma
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
