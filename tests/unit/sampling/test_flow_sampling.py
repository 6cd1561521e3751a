"""Flow-matching model sampling (SD3, FLUX.1, AuraFlow) and the MMDiT / Flux denoisers.

Closed forms: SD3's shift sigma = s·t / (1 + (s − 1)·t) (Esser et al. 2024, eq. 23), Flux's
sigma = e^mu / (e^mu + 1/t − 1) with mu linear in the image-token count (ComfyUI's ModelSamplingFlux:
0.5 at 256 tokens, 1.15 at 4096). The flow Euler sampler is checked against diffusers'
FlowMatchEulerDiscreteScheduler on the same sigmas and the same tiny MMDiT.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.diffusion.checkpoints.flow_loader import load_diffusion_model
from engine.diffusion.models import flux, mmdit
from engine.diffusion.sampling import ksampler
from engine.diffusion.sampling.flow_models import (
    FLUX_DEFAULT_GUIDANCE,
    flux_diffusion_model,
    mmdit_diffusion_model,
    split_flux_y,
)
from engine.diffusion.sampling.guidance import CFGDenoiser
from engine.diffusion.sampling.model_sampling import (
    ModelSamplingFlow,
    ModelSamplingFlux,
    auraflow_model_sampling,
    flux_shift_for_resolution,
    sd3_model_sampling,
    time_snr_shift,
)
from engine.diffusion.sampling.registry import default_sampler_registry
from tests.factories.flow_checkpoints import tiny_mmdit_state_dict, write_flow_file

# ---- model sampling: closed forms ------------------------------------------------------------------


def test_sd3_shift_closed_form_and_timesteps() -> None:
    ms = sd3_model_sampling()
    assert ms.shift == 3.0 and ms.prediction == "flow"
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(ms.sigma(t * 1000), 3 * t / (1 + 2 * t))
    assert float(ms.sigma(torch.tensor(500.0))) == pytest.approx(0.75)
    assert float(ms.timestep(torch.tensor(0.75))) == pytest.approx(750.0)
    assert len(ms.sigmas) == 1000 and float(ms.sigmas[-1]) == pytest.approx(1.0)
    assert float(ms.sigmas[0]) == pytest.approx(3 * 0.001 / (1 + 2 * 0.001))
    assert ms.percent_to_sigma(0.0) == 1.0 and ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(0.75)
    assert torch.equal(time_snr_shift(1.0, t), t)


def test_auraflow_multiplier_one_keeps_sigmas_in_0_1() -> None:
    # ComfyUI builds the table at t = i/1000 whatever the multiplier; the network sees t = sigma.
    ms = auraflow_model_sampling()
    assert (ms.shift, ms.multiplier) == (1.73, 1.0)
    assert float(ms.sigma_max) == pytest.approx(1.0) and float(ms.sigma_min) < 0.01
    assert float(ms.timestep(torch.tensor(0.4))) == pytest.approx(0.4)
    assert torch.allclose(ms.sigmas, sd3_model_sampling(1.73).sigmas)


def test_flux_shift_closed_form_and_resolution_rule() -> None:
    assert flux_shift_for_resolution(1024, 1024) == pytest.approx(1.15)
    assert flux_shift_for_resolution(256, 256) == pytest.approx(0.5)
    assert flux_shift_for_resolution(512, 512) == pytest.approx(0.5 + (1024 - 256) * 0.65 / 3840)
    ms = ModelSamplingFlux(1.15)
    assert len(ms.sigmas) == 10000 and float(ms.sigmas[-1]) == pytest.approx(1.0)
    for t in (0.1, 0.5, 0.9):
        expected = math.exp(1.15) / (math.exp(1.15) + 1 / t - 1)
        assert float(ms.sigma(torch.tensor(t))) == pytest.approx(expected)
        assert float(ms.timestep(torch.tensor(t))) == pytest.approx(t)  # Flux sees sigma itself
    assert ms.percent_to_sigma(0.5) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1))


def test_flow_noise_scaling_and_denoised_invert_each_other() -> None:
    ms = ModelSamplingFlow(3.0)
    g = torch.Generator().manual_seed(0)
    latent, noise = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    x = ms.noise_scaling(sigma, noise, latent)
    assert torch.allclose(x[0], 0.3 * noise[0] + 0.7 * latent[0])
    # The velocity of the straight path is noise - latent; x - sigma * v is the latent again.
    assert torch.allclose(ms.calculate_denoised(sigma, noise - latent, x), latent, atol=1e-6)
    assert torch.equal(ms.calculate_input(sigma, x), x)
    assert torch.allclose(ms.inverse_noise_scaling(torch.tensor(0.25), latent * 0.75), latent)


# ---- flow Euler vs diffusers ------------------------------------------------------------------------


def _tiny_mmdit(seed: int = 0) -> mmdit.MMDiT:
    model = mmdit.MMDiT(mmdit.TINY).eval()
    model.load_state_dict(tiny_mmdit_state_dict(mmdit.TINY, seed))
    return model


@pytest.mark.parity
def test_flow_euler_matches_diffusers_flow_match_euler() -> None:
    diffusers = pytest.importorskip("diffusers")
    model = _tiny_mmdit()
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(1, 6, mmdit.TINY.context_in_dim, generator=g)
    pooled = torch.randn(1, mmdit.TINY.adm_in_channels, generator=g)
    noise = torch.randn(1, 16, 8, 8, generator=g)

    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(6)
    sigmas = sched.sigmas.float().clone()  # shifted, with the trailing 0
    # diffusers shifts whatever sigmas it is given with the same formula as ours.
    linear = [1.0, 0.7, 0.4, 0.1]
    sched2 = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched2.set_timesteps(sigmas=linear)
    assert torch.allclose(
        sched2.sigmas[:-1].double(), time_snr_shift(3.0, torch.tensor(linear, dtype=torch.float64))
    )

    sample = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            v = model(sample, t.reshape(1).float(), ctx, pooled)
            sample = sched.step(v, t, sample).prev_sample
        dm = mmdit_diffusion_model(model)
        cond = [[ctx, {"pooled_output": pooled}]]
        ours = ksampler.sample_custom(
            lambda x, s: dm.apply(x, s, context=ctx, y=pooled),
            default_sampler_registry().get("euler"),
            sigmas,
            noise,
            torch.zeros_like(noise),
            model_sampling=dm.model_sampling,
        )
        guided = ksampler.sample_custom(
            _guider(dm, cond, noise),
            default_sampler_registry().get("euler"),
            sigmas,
            noise,
            torch.zeros_like(noise),
        )
    assert sample.abs().max() > 0.1
    assert (ours - sample).abs().max().item() <= 1e-4
    assert (guided - sample).abs().max().item() <= 1e-4


def _guider(dm, cond, like):  # type: ignore[no-untyped-def]
    return CFGDenoiser(dm, cond, None, 1.0, like=like)


# ---- end to end through the tiny transformers ------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow")
    out = {}
    for name, family, config in (
        ("sd3", "sd3", mmdit.TINY_X),
        ("flux_dev", "flux", flux.TINY),
        ("flux_schnell", "flux", flux.TINY_SCHNELL),
    ):
        out[name] = root / f"{name}.safetensors"
        write_flow_file(out[name], family, config=config, layout="diffusion_model")
    return out


def _conds(width_ctx: int, width_pooled: int, seed: int, **opts: object) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        [
            torch.randn(1, 7, width_ctx, generator=g),
            {"pooled_output": torch.randn(1, width_pooled, generator=g), **opts},
        ]
    ]


def _sample(regs, dm, positive, negative, cfg: float, seed: int, steps: int = 4) -> torch.Tensor:  # type: ignore[no-untyped-def]
    latent = torch.zeros(1, 16, 8, 6)
    return ksampler.sample(
        dm, None, steps, cfg, "euler", "simple", positive, negative, latent, seed=seed, **regs
    )


def test_sd3_tiny_sample_is_deterministic_with_cfg(files: dict[str, Path], regs) -> None:
    spec, model = load_diffusion_model(files["sd3"])
    cfg = spec.transformer_config
    dm = mmdit_diffusion_model(model)
    pos, neg = (
        _conds(cfg.context_in_dim, cfg.adm_in_channels, 1),
        _conds(cfg.context_in_dim, cfg.adm_in_channels, 2),
    )
    a = _sample(regs, dm, pos, neg, 4.5, seed=3)
    b = _sample(regs, dm, pos, neg, 4.5, seed=3)
    c = _sample(regs, dm, pos, neg, 4.5, seed=4)
    d = _sample(regs, dm, pos, neg, 1.0, seed=3)
    assert a.shape == (1, 16, 8, 6) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)


def test_flux_dev_guidance_rides_in_the_conditioning(files: dict[str, Path], regs) -> None:
    spec, model = load_diffusion_model(files["flux_dev"])
    cfg = spec.transformer_config
    dm = flux_diffusion_model(model)
    assert isinstance(dm.model_sampling, ModelSamplingFlux) and dm.model_sampling.shift == 1.15
    default = _sample(regs, dm, _conds(cfg.context_in_dim, cfg.vec_in_dim, 1), None, 1.0, seed=5)
    explicit = _sample(
        regs,
        dm,
        _conds(cfg.context_in_dim, cfg.vec_in_dim, 1, guidance=FLUX_DEFAULT_GUIDANCE),
        None,
        1.0,
        seed=5,
    )
    other = _sample(regs, dm, _conds(cfg.context_in_dim, cfg.vec_in_dim, 1, guidance=1.5), None, 1.0, seed=5)
    off = _sample(regs, dm, _conds(cfg.context_in_dim, cfg.vec_in_dim, 1, guidance=None), None, 1.0, seed=5)
    assert default.shape == (1, 16, 8, 6) and torch.isfinite(default).all()
    assert torch.equal(default, explicit)  # 3.5 is ComfyUI's default guidance
    assert not torch.allclose(default, other) and not torch.allclose(default, off)
    assert torch.equal(
        default, _sample(regs, dm, _conds(cfg.context_in_dim, cfg.vec_in_dim, 1), None, 1.0, seed=5)
    )


def test_flux_schnell_samples_unshifted_and_ignores_guidance(files: dict[str, Path], regs) -> None:
    spec, model = load_diffusion_model(files["flux_schnell"])
    cfg = spec.transformer_config
    dm = flux_diffusion_model(model)
    ms = dm.model_sampling
    assert (ms.shift, ms.multiplier) == (1.0, 1.0)
    a = _sample(
        regs, dm, _conds(cfg.context_in_dim, cfg.vec_in_dim, 1, guidance=7.0), None, 1.0, seed=6, steps=2
    )
    b = _sample(regs, dm, _conds(cfg.context_in_dim, cfg.vec_in_dim, 1), None, 1.0, seed=6, steps=2)
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_flux_model_sees_sigma_as_timestep_and_exact_guidance(files: dict[str, Path]) -> None:
    spec, model = load_diffusion_model(files["flux_dev"])
    cfg = spec.transformer_config
    dm = flux_diffusion_model(model, shift=flux_shift_for_resolution(64, 48))
    g = torch.Generator().manual_seed(9)
    x, ctx, pooled = (
        torch.randn(1, 16, 8, 6, generator=g),
        torch.randn(1, 3, cfg.context_in_dim, generator=g),
        torch.randn(1, cfg.vec_in_dim, generator=g),
    )
    y = dm.encode_adm({"pooled_output": pooled, "guidance": 3.3}, 64, 48)
    with torch.no_grad():
        ours = dm.apply(x, torch.tensor([0.6]), context=ctx, y=y)
        v = model(x, torch.tensor([0.6]), ctx, pooled, guidance=torch.tensor([3.3]))
    assert torch.allclose(ours, x - 0.6 * v, atol=1e-6)


def test_split_flux_y_refuses_mixed_guidance() -> None:
    like = torch.zeros(1)
    y = torch.tensor([[0.0, 3.5], [0.0, float("nan")]])
    with pytest.raises(ValueError, match="FluxDisableGuidance"):
        split_flux_y(y, 2, 1, like)
    pooled, g = split_flux_y(torch.tensor([[1.0, float("nan")]]), 1, 1, like)
    assert g is None and pooled.tolist() == [[1.0]]


def test_flux_guidance_is_not_rounded_to_a_bfloat16_model_dtype(files: dict[str, Path]) -> None:
    # The guidance column of y must reach the embedding in float32 (3.3 is not a bfloat16 number).
    spec, model = load_diffusion_model(files["flux_dev"], dtype=torch.bfloat16)
    cfg = spec.transformer_config
    dm = flux_diffusion_model(model)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 16, 8, 6, generator=g)
    ctx = torch.randn(1, 3, cfg.context_in_dim, generator=g)
    pooled = torch.randn(1, cfg.vec_in_dim, generator=g)
    y = dm.encode_adm({"pooled_output": pooled, "guidance": 3.3}, 64, 48)
    with torch.no_grad():
        ours = dm.apply(x, torch.tensor([0.6]), context=ctx, y=y)
        v = model(x, torch.tensor([0.6]), ctx, pooled, guidance=torch.tensor([3.3]))
    assert torch.equal(ours, x - 0.6 * v)
