"""DiffusionModel and the CFG/conditioning denoiser with a pointwise toy UNet.

The toy UNet is elementwise in space and invariant to repeating the token sequence, so expected
values can be built from separate full-frame ``DiffusionModel.apply`` calls and the weighting rules
written out by hand here.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.guidance import CFGDenoiser, InpaintDenoiser, prepare_denoise_mask
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete

MS = ModelSamplingDiscrete("eps")


def latent(b=1, h=32, w=32, seed=0):
    return torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed))


def sig(v, b=1):
    return torch.full((b,), float(v))


def full(model, x, sigma, context, **kw):
    return model.apply(x, sigma, context=context, **kw)


def test_apply_scales_input_converts_timestep_and_output(pointwise_unet):
    unet = pointwise_unet()
    model = DiffusionModel(unet, MS)
    x = latent()
    s = sig(3.0)
    ctx = torch.full((1, 77, 8), 0.25)
    out = model.apply(x, s, context=ctx)
    call = unet.calls[-1]
    torch.testing.assert_close(call["x"], x / math.sqrt(10.0))
    # ComfyUI feeds the nearest training timestep: round the (log-interpolated) continuous one.
    t_cont = float(MS.timestep(torch.tensor(3.0)))
    assert t_cont != round(t_cont) and float(call["t"][0]) == round(t_cont)
    unq = DiffusionModel(pointwise_unet(), ModelSamplingDiscrete("eps", quantize_timesteps=False))
    unq.apply(x, s, context=ctx)
    assert float(unq.unet.calls[-1]["t"][0]) == pytest.approx(t_cont, abs=1e-4)
    eps = 0.1 * x / math.sqrt(10.0) + 0.05 * float(call["t"][0]) / 1000 + 0.25
    torch.testing.assert_close(out, x - 3.0 * eps)


def test_apply_runs_unet_in_its_dtype(pointwise_unet):
    unet = pointwise_unet().to(torch.float64)
    model = DiffusionModel(unet, MS)
    out = model.apply(latent(), sig(1.0), context=torch.zeros(1, 77, 8))
    assert unet.calls[-1]["x"].dtype == torch.float64 and out.dtype == torch.float32


def test_cfg_batches_cond_and_uncond_in_one_call(pointwise_unet, make_cond):
    unet = pointwise_unet()
    model = DiffusionModel(unet, MS)
    x = latent(b=2)
    pos, neg = [make_cond(1.0)], [make_cond(-0.5)]
    den = CFGDenoiser(model, pos, neg, 7.5, like=x)
    out = den(x, sig(2.0, 2))
    assert den.model_calls == 1 and unet.calls[-1]["x"].shape[0] == 4
    assert unet.calls[-1]["topts"]["cond_or_uncond"] == [0, 1]
    c = full(model, x, sig(2.0, 2), pos[0][0].expand(2, -1, -1))
    u = full(model, x, sig(2.0, 2), neg[0][0].expand(2, -1, -1))
    torch.testing.assert_close(out, u + 7.5 * (c - u))


def test_cfg_one_skips_the_uncond_pass(pointwise_unet, make_cond):
    unet = pointwise_unet()
    model = DiffusionModel(unet, MS)
    x = latent()
    den = CFGDenoiser(model, [make_cond(1.0)], [make_cond(-0.5)], 1.0, like=x)
    out = den(x, sig(2.0))
    assert den.model_calls == 1 and unet.calls[-1]["x"].shape[0] == 1
    torch.testing.assert_close(out, full(model, x, sig(2.0), torch.full((1, 77, 8), 1.0)))


def test_different_token_lengths_batch_when_the_multiple_is_small(pointwise_unet, make_cond):
    unet = pointwise_unet()
    model = DiffusionModel(unet, MS)
    x = latent()
    pos = [[torch.randn(1, 154, 8, generator=torch.Generator().manual_seed(1)), {}]]
    neg = [make_cond(0.2, tokens=77)]
    den = CFGDenoiser(model, pos, neg, 5.0, like=x)
    out = den(x, sig(1.0))
    assert den.model_calls == 1 and unet.calls[-1]["context"].shape[1] == 154
    c = full(model, x, sig(1.0), pos[0][0])
    u = full(model, x, sig(1.0), neg[0][0])
    torch.testing.assert_close(out, u + 5.0 * (c - u))
    # 77 vs 385 tokens: common multiple 5x the shorter one - too wasteful, two calls.
    den2 = CFGDenoiser(model, [make_cond(1.0, tokens=385)], neg, 5.0, like=x)
    den2(x, sig(1.0))
    assert den2.model_calls == 2


def test_area_conditioning_weights_with_feathered_edges(pointwise_unet, make_cond):
    model = DiffusionModel(pointwise_unet(), MS)
    x = latent(h=32, w=32)
    s = sig(1.5)
    a, b = make_cond(1.0), make_cond(-2.0, area=(16, 16, 0, 0), strength=1.0)
    den = CFGDenoiser(model, [a, b], None, 1.0, like=x)
    out = den(x, s)
    da, db = full(model, x, s, a[0]), full(model, x, s, b[0])
    # Inside the area, away from its inner edges (rows/cols < 8): equal weights -> mean.
    torch.testing.assert_close(out[..., :8, :8], (da + db)[..., :8, :8] / 2)
    # Outside the area only A contributes.
    torch.testing.assert_close(out[..., 16:, :], da[..., 16:, :])
    # Row 15 is the last row before the area's inner edge: weight 1/8 (ComfyUI's 8-px ramp).
    w = 1 / 8
    torch.testing.assert_close(out[..., 15, :4], ((da + w * db) / (1 + w))[..., 15, :4])
    assert unet_saw_crop(model.unet, (16, 16))


def unet_saw_crop(unet, hw) -> bool:
    return any(tuple(c["x"].shape[-2:]) == hw for c in unet.calls)


def test_mask_conditioning_with_strength(pointwise_unet, make_cond):
    model = DiffusionModel(pointwise_unet(), MS)
    x = latent(h=16, w=16)
    s = sig(1.0)
    mask = torch.zeros(1, 128, 128)  # pixel-resolution mask, resized to the latent
    mask[:, :, :64] = 1.0
    a = make_cond(1.0)
    b = make_cond(-2.0, mask=mask, mask_strength=1.0, strength=0.5)
    out = CFGDenoiser(model, [a, b], None, 1.0, like=x)(x, s)
    da, db = full(model, x, s, a[0]), full(model, x, s, b[0])
    torch.testing.assert_close(out[..., :, :7], ((da + 0.5 * db) / 1.5)[..., :, :7])
    torch.testing.assert_close(out[..., :, 9:], da[..., :, 9:])


def test_set_area_to_bounds_evaluates_only_the_mask_box(pointwise_unet, make_cond):
    unet = pointwise_unet()
    model = DiffusionModel(unet, MS)
    x = latent(h=32, w=32)
    mask = torch.zeros(1, 32, 32)
    mask[:, 4:14, 10:22] = 1.0
    b = make_cond(-2.0, mask=mask, set_area_to_bounds=True)
    out = CFGDenoiser(model, [make_cond(1.0), b], None, 1.0, like=x)(x, sig(1.0))
    assert unet_saw_crop(unet, (10, 12))
    da, db = full(model, x, sig(1.0), torch.full((1, 77, 8), 1.0)), full(model, x, sig(1.0), b[0])
    torch.testing.assert_close(out[..., 5:13, 11:21], ((da + db) / 2)[..., 5:13, 11:21])
    torch.testing.assert_close(out[..., 20:, :], da[..., 20:, :])


def test_timestep_range(pointwise_unet, make_cond):
    model = DiffusionModel(pointwise_unet(), MS)
    x = latent(h=8, w=8)
    a = make_cond(1.0)
    b = make_cond(-2.0, start_percent=0.0, end_percent=0.5)
    den = CFGDenoiser(model, [a, b], None, 1.0, like=x)
    cut = MS.percent_to_sigma(0.5)  # sigma half-way through the schedule (timestep 499.5)
    hi, lo = sig(cut * 1.5), sig(cut / 1.5)
    torch.testing.assert_close(den(x, hi), (full(model, x, hi, a[0]) + full(model, x, hi, b[0])) / 2)
    torch.testing.assert_close(den(x, lo), full(model, x, lo, a[0]))


def test_adm_and_control_hooks(pointwise_unet, make_cond):
    seen = []

    def adm(cond, width, height):
        seen.append((cond["pooled_output"].shape, width, height))
        return torch.cat([cond["pooled_output"], torch.tensor([[width / 1000.0, height / 1000.0]])], dim=1)

    class Control:
        def __init__(self):
            self.calls = 0

        def get_control(self, x, sigma, context, y):
            self.calls += 1
            return {"input": [x * 0], "middle": [], "output": []}

    unet = pointwise_unet()
    model = DiffusionModel(unet, MS, adm_builder=adm)
    ctrl = Control()
    x = latent(h=16, w=24)
    pos = [make_cond(1.0, pooled_output=torch.ones(1, 6), control=ctrl)]
    neg = [make_cond(0.0, pooled_output=torch.zeros(1, 6), control=ctrl)]
    CFGDenoiser(model, pos, neg, 4.0, like=x)(x, sig(1.0))
    assert seen == [((1, 6), 192, 128), ((1, 6), 192, 128)]
    call = unet.calls[-1]
    assert call["y"].shape == (2, 8) and ctrl.calls == 1
    assert call["control"]["input"][0].shape == (2, 4, 16, 24)


def test_nine_channel_inpaint_concat(pointwise_unet, make_cond):
    unet = pointwise_unet(in_channels=9)
    model = DiffusionModel(unet, MS, inpaint_concat=True)
    lat = latent(h=16, w=16, seed=3)
    mask = torch.zeros(1, 128, 128)
    mask[:, 64:, :] = 1.0
    m = prepare_denoise_mask(mask, lat)
    den = CFGDenoiser(model, [make_cond(1.0)], None, 1.0, like=lat, latent_image=lat, denoise_mask=m)
    den(lat, sig(1.0))
    xin = unet.calls[-1]["x"]
    assert xin.shape[1] == 9
    torch.testing.assert_close(xin[:, 4:5], m[:, :1])
    torch.testing.assert_close(xin[:, 5:], lat)
    # Explicit "concat_latent_image"/"concat_mask" in the conditioning win over the sampling inputs.
    other = torch.ones_like(lat)
    den2 = CFGDenoiser(
        model,
        [make_cond(1.0, concat_latent_image=other, concat_mask=torch.ones(1, 16, 16))],
        None,
        1.0,
        like=lat,
        latent_image=lat,
        denoise_mask=m,
    )
    den2(lat, sig(1.0))
    assert bool((unet.calls[-1]["x"][:, 4:] == 1).all())


def test_inpaint_denoiser_keeps_unmasked_region(pointwise_unet, make_cond):
    model = DiffusionModel(pointwise_unet(), MS)
    lat = latent(h=8, w=8, seed=5)
    noise = latent(h=8, w=8, seed=6)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, 4:] = 1.0
    m = prepare_denoise_mask(mask, lat)
    inner = CFGDenoiser(model, [make_cond(1.0)], None, 1.0, like=lat)
    den = InpaintDenoiser(inner, MS, latent_image=lat, noise=noise, mask=m)
    x = latent(h=8, w=8, seed=7)
    s = sig(2.0)
    out = den(x, s)
    torch.testing.assert_close(out[..., :4], lat[..., :4])
    # The masked half saw x, the unmasked half the input latent re-noised to sigma = 2.
    expected_in = torch.where(m > 0, x, lat + 2.0 * noise)
    torch.testing.assert_close(out[..., 4:], inner(expected_in, s)[..., 4:])


def test_errors_are_explicit(pointwise_unet, make_cond):
    model = DiffusionModel(pointwise_unet(), MS)
    x = latent(h=8, w=8)
    with pytest.raises(ValueError, match="needs a negative"):
        CFGDenoiser(model, [make_cond(1.0)], None, 7.0, like=x)
    with pytest.raises(ValueError, match="entry 0 must be"):
        CFGDenoiser(model, [torch.zeros(1, 77, 8)], None, 1.0, like=x)
