"""Model patch and guidance nodes on a tiny random SD1 checkpoint: each patched model's prediction against a
hand computation of ComfyUI's formula from the unpatched model's cond / uncond predictions, patched weights
against scaled originals, the discrete schedules against their closed forms, and the input model unchanged
(clone isolation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.api import sampling
from engine.folders import Folders
from engine.handles.saving import patched_state_dict
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context, sampling_library

L, P, G = builtin("loaders"), builtin("model_patches"), builtin("guidance_patches")
S = builtin("model_sampling_patches")
SIGMA = torch.tensor([2.5])
CFG = 5.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch_env")
    write_tiny_checkpoint(root / "models" / "checkpoints" / "a.safetensors", "sd1", seed=21)
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    model, clip, _ = L.checkpoint_loader_simple(ckpt_name="a.safetensors", context=ctx)
    gen = torch.Generator().manual_seed(5)
    conds = {name: [[torch.randn(1, 5, 32, generator=gen), {}]] for name in ("positive", "negative", "empty")}
    x = torch.randn(1, 4, 16, 16, generator=gen) * 2.5
    return model, clip, conds, x


def predict(model, conds, x, cfg=CFG, kind="cfg", sigma=SIGMA):
    names = {"positive": conds["positive"]}
    if kind == "cfg":
        names["negative"] = conds["negative"]
    guider = sampling.Guider(model, kind, names, cfg)
    with torch.no_grad(), model.use():
        return guider.denoiser(x, latent_image=x, denoise_mask=None)(x, sigma)


def sides(model, conds, x):
    """The unpatched model's positive and negative x0 estimates, each from its own unguided run."""
    pos = predict(model, conds, x, kind="basic")
    neg = predict(model, {"positive": conds["negative"]}, x, kind="basic")
    return pos, neg


def assert_unchanged(model, conds, x, before_options):
    assert model.model_options == before_options
    cond, uncond = sides(model, conds, x)
    torch.testing.assert_close(predict(model, conds, x), uncond + CFG * (cond - uncond), rtol=1e-4, atol=1e-4)


def test_rescale_cfg_is_the_std_rescaled_v_prediction_blend(env):
    model, _, conds, x = env
    before = dict(model.model_options)
    (patched,) = G.rescale_cfg(model=model, multiplier=0.7)
    got = predict(patched, conds, x)
    cond, uncond = sides(model, conds, x)
    s = float(SIGMA)
    # v = (alpha x_vp - x0) / sigma_vp in VP form: with x_vp = x / sqrt(1+s²), v = (x/(1+s²) - x0)·sqrt(1+s²)/s.
    v_c = (x / (1 + s * s) - cond) * (1 + s * s) ** 0.5 / s
    v_u = (x / (1 + s * s) - uncond) * (1 + s * s) ** 0.5 / s
    v_cfg = v_u + CFG * (v_c - v_u)
    v_final = 0.7 * v_cfg * (v_c.std() / v_cfg.std()) + 0.3 * v_cfg
    expected = x / (1 + s * s) - v_final * s / (1 + s * s) ** 0.5
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, uncond + CFG * (cond - uncond), atol=1e-3)
    assert_unchanged(model, conds, x, before)


def test_perturbed_attention_guidance_adds_the_identity_attention_difference(env):
    model, _, conds, x = env
    (patched,) = G.perturbed_attention_guidance(model=model, scale=2.0)
    got = predict(patched, conds, x)
    cond, uncond = sides(model, conds, x)
    perturbed_model = model.clone()
    perturbed_model.set_model_attn1_replace(lambda q, k, v, extra, mask=None: v, "middle", 0)
    perturbed = predict(perturbed_model, conds, x, kind="basic")
    assert not torch.allclose(perturbed, cond, atol=1e-4)  # the replace reaches the middle block
    torch.testing.assert_close(
        got, uncond + CFG * (cond - uncond) + 2.0 * (cond - perturbed), rtol=1e-4, atol=1e-4
    )
    (off,) = G.perturbed_attention_guidance(model=model, scale=0.0)
    torch.testing.assert_close(predict(off, conds, x), predict(model, conds, x), rtol=1e-5, atol=1e-5)
    assert "sampler_post_cfg_function" not in model.model_options


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("epsilon_scaling", {"scaling_factor": 1.2}),
        ("cfg_zero_star", {}),
        ("cfg_norm", {"strength": 0.8}),
        ("mahiro", {}),
        ("tcfg", {}),
        ("fresca", {"scale_low": 0.8, "scale_high": 1.5, "freq_cutoff": 3}),
    ],
)
def test_guidance_hooks_match_their_formulas(env, name, kwargs):
    model, _, conds, x = env
    before = dict(model.model_options)
    (patched,) = getattr(G, name)(model=model, **kwargs)
    got = predict(patched, conds, x)
    cond, uncond = sides(model, conds, x)
    cfg = uncond + CFG * (cond - uncond)
    expected = HAND[name](x, cond, uncond, cfg, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, cfg, atol=1e-4)
    assert_unchanged(model, conds, x, before)


def _eps(x, cond, uncond, cfg, scaling_factor):
    return x - (x - cfg) / scaling_factor


def _zero_star(x, cond, uncond, cfg):
    e_c, e_u = (x - cond).flatten(), (x - uncond).flatten()
    alpha = float(e_c @ e_u / (e_u @ e_u + 1e-8))
    return cfg + uncond * (alpha - 1) + CFG * uncond * (1 - alpha)


def _norm(x, cond, uncond, cfg, strength):
    ratio = (cond.norm(dim=1, keepdim=True) / (cfg.norm(dim=1, keepdim=True) + 1e-8)).clamp(0, 1)
    return cfg * ratio * strength


def _mahiro(x, cond, uncond, cfg):
    leap, u_leap = cond * CFG, uncond * CFG
    merge = (leap + cfg) / 2
    sim = F.cosine_similarity(u_leap.abs().sqrt() * u_leap.sign(), merge.abs().sqrt() * merge.sign(), dim=1)
    w = 2 * (sim.mean() + 1)
    return (w * cfg + (4 - w) * leap) / 4


def _tcfg(x, cond, uncond, cfg):
    # Keep only the unconditional noise's component along the top right-singular vector of [e_u; e_c].
    e_c, e_u = (x - cond).flatten().double().numpy(), (x - uncond).flatten().double().numpy()
    _, _, vh = np.linalg.svd(np.stack([e_u, e_c]), full_matrices=False)
    damped = torch.from_numpy((e_u @ vh[0]) * vh[0]).float().reshape(x.shape)
    new_uncond = x - damped
    return new_uncond + CFG * (cond - new_uncond)


def _fresca(x, cond, uncond, cfg, scale_low, scale_high, freq_cutoff):
    spectrum = np.fft.fftshift(np.fft.fft2((cond - uncond).double().numpy()), axes=(-2, -1))
    mask = np.full(spectrum.shape, scale_high)
    cy, cx = spectrum.shape[-2] // 2, spectrum.shape[-1] // 2
    mask[..., cy - freq_cutoff : cy + freq_cutoff, cx - freq_cutoff : cx + freq_cutoff] = scale_low
    guidance = np.fft.ifft2(np.fft.ifftshift(spectrum * mask, axes=(-2, -1))).real
    return uncond + CFG * torch.from_numpy(guidance).float()


HAND = {
    "epsilon_scaling": _eps,
    "cfg_zero_star": _zero_star,
    "cfg_norm": _norm,
    "mahiro": _mahiro,
    "tcfg": _tcfg,
    "fresca": _fresca,
}


def _perp(pos, neg, empty, neg_scale, cfg):
    p, n = (pos - empty).flatten(), (neg - empty).flatten()
    perp = n - (n @ p) / (p @ p) * p
    return empty + cfg * (p - neg_scale * perp).reshape(pos.shape)


def test_perp_neg_model_and_guider_match_the_projection_formula(env):
    model, _, conds, x = env
    cond, uncond = sides(model, conds, x)
    empty = predict(model, {"positive": conds["empty"]}, x, kind="basic")
    expected = _perp(cond, uncond, empty, 0.6, CFG)
    (patched,) = G.perp_neg_model(model=model, empty_conditioning=conds["empty"], neg_scale=0.6)
    torch.testing.assert_close(predict(patched, conds, x), expected, rtol=1e-4, atol=1e-4)
    (guider,) = G.perp_neg_guider(
        model=model,
        positive=conds["positive"],
        negative=conds["negative"],
        empty_conditioning=conds["empty"],
        cfg=CFG,
        neg_scale=0.6,
    )
    with torch.no_grad(), model.use():
        got = guider.denoiser(x, latent_image=x, denoise_mask=None)(x, SIGMA)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert "sampler_cfg_function" not in model.model_options


def test_perp_neg_guider_samples_with_the_custom_sampler(env):
    model, _, conds, x = env
    (guider,) = G.perp_neg_guider(
        model=model,
        positive=conds["positive"],
        negative=conds["negative"],
        empty_conditioning=conds["empty"],
        cfg=3.0,
        neg_scale=1.0,
    )
    sigmas = torch.tensor([3.0, 1.0, 0.0])
    noise = sampling.RandomNoise(3)
    spec = sampling_library().sampler("euler")
    out, _ = sampling.custom_sample(noise, guider, spec, sigmas, {"samples": torch.zeros(1, 4, 16, 16)})
    assert out["samples"].shape == (1, 4, 16, 16) and torch.isfinite(out["samples"]).all()


# ---- UNet patches ---------------------------------------------------------------------------------


def _fourier_hand(x, scale):
    # The 2x2 centre of the shifted spectrum is frequencies {-1, 0} in each spatial axis.
    spectrum = np.fft.fft2(x.double().numpy())
    h, w = x.shape[-2:]
    for ky in (0, h - 1):
        for kx in (0, w - 1):
            spectrum[..., ky, kx] *= scale
    return torch.from_numpy(np.fft.ifft2(spectrum).real).float()


def test_freeu_patch_scales_backbone_half_and_filters_the_skip(env):
    model, _, conds, x = env
    (patched,) = P.freeu(model=model, b1=1.1, b2=1.5, s1=0.9, s2=0.3)
    (patch,) = patched.model_options["transformer_options"]["patches"]["output_block_patch"]
    gen = torch.Generator().manual_seed(1)
    h, hsp = torch.randn(2, 64, 8, 8, generator=gen), torch.randn(2, 64, 8, 8, generator=gen)
    new_h, new_hsp = patch(h.clone(), hsp.clone(), {})
    torch.testing.assert_close(new_h[:, :32], h[:, :32] * 1.5)
    torch.testing.assert_close(new_h[:, 32:], h[:, 32:])
    torch.testing.assert_close(new_hsp, _fourier_hand(hsp, 0.3), rtol=1e-5, atol=1e-5)
    other = torch.randn(1, 48, 4, 4, generator=gen)  # a channel count FreeU leaves alone
    assert patch(other, other, {})[0] is other
    # The tiny UNet (32 base channels) has 64-channel decoder stages: FreeU changes its prediction, the
    # neutral factors do not, and the input model keeps no patch.
    (neutral,) = P.freeu(model=model, b1=1.0, b2=1.0, s1=1.0, s2=1.0)
    torch.testing.assert_close(predict(neutral, conds, x), predict(model, conds, x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(predict(patched, conds, x), predict(model, conds, x), atol=1e-4)
    assert "patches" not in model.model_options["transformer_options"]


def test_freeu_v2_factor_follows_the_normalised_channel_mean(env):
    model, _, _, _ = env
    (patched,) = P.freeu_v2(model=model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)
    (patch,) = patched.model_options["transformer_options"]["patches"]["output_block_patch"]
    h = torch.randn(1, 64, 6, 6, generator=torch.Generator().manual_seed(2))
    new_h, _ = patch(h.clone(), h.clone(), {})
    mean = h.mean(1, keepdim=True)
    norm = (mean - mean.min()) / (mean.max() - mean.min())
    torch.testing.assert_close(new_h[:, :32], h[:, :32] * (0.4 * norm + 1))


def test_unet_attention_multiplies_scale_exactly_their_weights(env):
    model, _, _, _ = env
    original = patched_state_dict(model)
    (self_attn,) = P.unet_self_attention_multiply(model=model, q=0.5, k=1.0, v=2.0, out=3.0)
    (cross,) = P.unet_cross_attention_multiply(model=model, q=1.5, k=0.25, v=1.0, out=1.0)
    factors = {
        id(self_attn): {"attn1.to_q": 0.5, "attn1.to_v": 2.0, "attn1.to_out.0": 3.0},
        id(cross): {"attn2.to_q": 1.5, "attn2.to_k": 0.25},
    }
    for handle in (self_attn, cross):
        got = patched_state_dict(handle)
        scaled = 0
        for key, value in original.items():
            f = next(
                (f for s, f in factors[id(handle)].items() if key.endswith((s + ".weight", s + ".bias"))), 1.0
            )
            scaled += f != 1.0
            torch.testing.assert_close(got[key], value * f, msg=key)
        assert scaled > 0
    after = patched_state_dict(model)
    assert all(torch.equal(after[k], v) for k, v in original.items())


def test_clip_attention_multiply_scales_self_attention_projections(env):
    _, clip, _, _ = env
    original = patched_state_dict(clip)
    (scaled,) = P.clip_attention_multiply(clip=clip, q=2.0, k=1.0, v=0.5, out=1.0)
    got = patched_state_dict(scaled)
    factors = {"self_attn.q_proj": 2.0, "self_attn.v_proj": 0.5}
    touched = 0
    for key, value in original.items():
        f = next((f for s, f in factors.items() if key.endswith((s + ".weight", s + ".bias"))), 1.0)
        touched += f != 1.0
        torch.testing.assert_close(got[key], value * f, msg=key)
    assert touched >= 4
    assert not clip.patcher.patches


# ---- model sampling and masks -----------------------------------------------------------------------


def _sd_sigmas(zsnr: bool) -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    ac = np.cumprod(1 - betas)
    if zsnr:
        r = np.sqrt(ac)
        r = (r - r[-1]) * r[0] / (r[0] - r[-1])
        ac = r**2
        ac[-1] = 4.8973451890853435e-08
    return np.sqrt((1 - ac) / ac)


def test_model_sampling_discrete_v_prediction_zsnr_sigmas_and_prediction(env):
    model, _, conds, x = env
    before_sampling = model.model_sampling
    (v,) = S.model_sampling_discrete(model=model, sampling="v_prediction", zsnr=True)
    np.testing.assert_allclose(v.model_sampling.sigmas.numpy(), _sd_sigmas(True), rtol=1e-5)
    assert v.model_sampling.sigma_max == pytest.approx(4518.8, rel=1e-3)
    (v_plain,) = S.model_sampling_discrete(model=model, sampling="v_prediction", zsnr=False)
    (x0,) = S.model_sampling_discrete(model=model, sampling="x0", zsnr=False)
    np.testing.assert_allclose(v_plain.model_sampling.sigmas.numpy(), _sd_sigmas(False), rtol=1e-5)
    # Same network output F at the same timestep: eps gives x - s·F, v gives x/(1+s²) - F·s/sqrt(1+s²),
    # x0 gives F.
    s = float(SIGMA)
    eps_den = predict(model, conds, x, kind="basic")
    out = (x - eps_den) / s
    torch.testing.assert_close(
        predict(v_plain, conds, x, kind="basic"),
        x / (1 + s * s) - out * s / (1 + s * s) ** 0.5,
        rtol=1e-4,
        atol=1e-4,
    )
    torch.testing.assert_close(predict(x0, conds, x, kind="basic"), out, rtol=1e-4, atol=1e-4)
    assert model.model_sampling is before_sampling and model.model_sampling.prediction == "eps"


def test_differential_diffusion_mask_thresholds_by_timestep_progress(env):
    model, _, _, _ = env
    (patched,) = P.differential_diffusion(model=model, strength=1.0)
    fn = patched.model_options["denoise_mask_function"]
    ms = model.model_sampling
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.0])
    mask = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11)
    extra = {"model": patched.model, "sigmas": sigmas}
    t_from, t_to, t_now = (float(ms.timestep(torch.tensor(v))) for v in (10.0, ms.sigma_min, 5.0))
    threshold = (t_now - t_to) / (t_from - t_to)
    torch.testing.assert_close(fn(torch.tensor([5.0]), mask, extra), (mask >= threshold).float())
    assert torch.equal(fn(torch.tensor([10.0]), mask, extra), (mask >= 1.0).float())
    (half,) = P.differential_diffusion(model=model, strength=0.25)
    got = half.model_options["denoise_mask_function"](torch.tensor([5.0]), mask, extra)
    torch.testing.assert_close(got, 0.25 * (mask >= threshold).float() + 0.75 * mask)
    assert "denoise_mask_function" not in model.model_options


def test_deep_shrink_shrinks_the_chosen_block_only_inside_its_sigma_range(env):
    model, _, conds, x = env
    kw = {"downscale_factor": 2.0, "downscale_after_skip": True}
    kw |= {"downscale_method": "bicubic", "upscale_method": "bicubic", "block_number": 2}
    (always,) = P.patch_model_add_downscale(model=model, start_percent=0.0, end_percent=1.0, **kw)
    (late,) = P.patch_model_add_downscale(model=model, start_percent=0.9, end_percent=1.0, **kw)
    (down,) = always.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"]
    h = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(3))
    opts = {"block": ("input", 2), "sigmas": torch.tensor([2.5])}
    torch.testing.assert_close(down(h, opts), F.interpolate(h, size=(4, 4), mode="bicubic"))
    assert down(h, {**opts, "block": ("input", 1)}) is h
    plain = predict(model, conds, x)
    shrunk = predict(always, conds, x)
    assert shrunk.shape == plain.shape and not torch.allclose(shrunk, plain, atol=1e-3)
    # sigma 2.5 lies above the range 0.9..1.0 of the schedule: the model is untouched there.
    torch.testing.assert_close(predict(late, conds, x), plain, rtol=1e-5, atol=1e-5)
    assert "patches" not in model.model_options["transformer_options"]


def test_model_sampling_discrete_lcm_and_img_to_img(env):
    model, _, conds, x = env
    (lcm,) = S.model_sampling_discrete(model=model, sampling="lcm", zsnr=False)
    ms = lcm.model_sampling
    full = _sd_sigmas(False)
    np.testing.assert_allclose(ms.sigmas.numpy(), full[19::20], rtol=1e-5)  # timesteps 19, 39, ..., 999
    assert float(ms.timestep(torch.tensor(float(full[500])))) == 499.0  # nearest distilled timestep
    assert float(ms.sigma(torch.tensor(999.0))) == pytest.approx(full[999], rel=1e-5)
    assert ms.percent_to_sigma(0.0) > 1e8 and ms.percent_to_sigma(1.0) == 0.0
    # Same network output F at sigma s (the eps model fed timestep t = 59 here: nearest distilled one):
    # c_skip = 0.25 / ((10t)² + 0.25), c_out = 10t / sqrt((10t)² + 0.25) applied to x - s·F.
    s = float(full[59])
    sigma = torch.tensor([s])
    eps_den = predict(model, conds, x, kind="basic", sigma=sigma)
    t = 590.0
    c_skip, c_out = 0.25 / (t * t + 0.25), t / (t * t + 0.25) ** 0.5
    torch.testing.assert_close(
        predict(lcm, conds, x, kind="basic", sigma=sigma), c_out * eps_den + c_skip * x, rtol=1e-4, atol=1e-4
    )
    # img_to_img: the input is not scaled and the output is the estimate itself; eps again after it.
    (i2i,) = S.model_sampling_discrete(model=model, sampling="img_to_img", zsnr=False)
    assert torch.equal(i2i.model_sampling.calculate_input(SIGMA, x), x)
    (back,) = S.model_sampling_discrete(model=i2i, sampling="eps", zsnr=False)
    torch.testing.assert_close(predict(back, conds, x, kind="basic"), predict(model, conds, x, kind="basic"))
    assert type(back.model_sampling) is type(model.model_sampling)


def _blur_hand(x, sigma):
    # 9-tap Gaussian, reflect padding, applied along rows then columns.
    taps = np.exp(-0.5 * (np.arange(-4, 5) / sigma) ** 2)
    taps /= taps.sum()
    a = np.pad(x.double().numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    rows = sum(taps[i] * a[:, :, i : i + x.shape[2], :] for i in range(9))
    return torch.from_numpy(sum(taps[j] * rows[:, :, :, j : j + x.shape[3]] for j in range(9))).float()


def test_self_attention_guidance_blurs_where_the_uncond_attention_concentrates(env):
    model, _, conds, x = env
    (patched,) = G.self_attention_guidance(model=model, scale=0.8, blur_sigma=2.0)
    got = predict(patched, conds, x)
    cond, uncond = sides(model, conds, x)
    seen = {}

    def recorder(q, k, v, extra, mask=None):
        heads = extra["n_heads"]
        b, t, inner = q.shape
        d = inner // heads
        qh, kh, vh = (z.reshape(b, -1, heads, d).transpose(1, 2) for z in (q, k, v))
        weights = (qh @ kh.transpose(-1, -2) / d**0.5).softmax(-1)  # (b, heads, Tq, Tk)
        seen["w"] = weights
        return (weights @ vh).transpose(1, 2).reshape(b, t, inner)

    rec = model.clone()
    rec.set_model_attn1_replace(recorder, "middle", 0, 0)
    torch.testing.assert_close(predict(rec, {"positive": conds["negative"]}, x, kind="basic"), uncond)
    # Keys receiving more than 1 unit of (head-averaged) attention, on the middle block's 8x8 grid.
    mask = (seen["w"].mean(1).sum(1) > 1.0).float().reshape(1, 1, 8, 8)
    mask = mask.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest upsampling to 16x16
    assert 0 < mask.sum() < mask.numel()
    degraded = _blur_hand(uncond, 2.0) * mask + uncond * (1 - mask)
    sag = predict(model, {"positive": conds["negative"]}, degraded + x - uncond, kind="basic")
    expected = uncond + CFG * (cond - uncond) + 0.8 * (degraded - sag)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert "patches_replace" not in model.model_options["transformer_options"]


def test_hypertile_tiles_queries_and_restores_the_token_order(env):
    model, _, conds, x = env
    (patched,) = P.hypertile(model=model, tile_size=64, swap_size=1, max_depth=0, scale_depth=False)
    patches = patched.model_options["transformer_options"]["patches"]
    (tile_in,), (tile_out,) = patches["attn1_patch"], patches["attn1_output_patch"]
    q = torch.arange(2 * 256 * 3, dtype=torch.float32).reshape(2, 256, 3)
    extra = {"original_shape": [2, 4, 16, 16]}
    tq, tk, tv = tile_in(q, q, q, extra)
    # tile_size 64 -> 8-pixel tiles: 2 x 2 tiles of the 16 x 16 token grid, row-major per item.
    grid = q.reshape(2, 16, 16, 3)
    assert tq.shape == (8, 64, 3)
    torch.testing.assert_close(tq[1], grid[0, :8, 8:].reshape(64, 3))
    torch.testing.assert_close(tq[6], grid[1, 8:, :8].reshape(64, 3))
    torch.testing.assert_close(tk, q.reshape(8, 64, 3))  # keys: consecutive chunks, as ComfyUI reads them
    torch.testing.assert_close(tile_out(tq, extra), q)
    # Other levels (64 tokens) pass through untouched.
    small = torch.randn(2, 64, 3)
    assert tile_in(small, small, small, extra)[0] is small
    assert not torch.allclose(predict(patched, conds, x), predict(model, conds, x), atol=1e-4)
    (whole,) = P.hypertile(model=model, tile_size=128, swap_size=1, max_depth=0, scale_depth=False)
    torch.testing.assert_close(predict(whole, conds, x), predict(model, conds, x), rtol=1e-5, atol=1e-5)


def test_token_merging_averages_the_most_similar_sources_into_their_destinations():
    T = builtin("token_merging")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 6, generator=gen)
    torch.manual_seed(0)
    merge, unmerge = T.bipartite_merge(x, 4, 4, 3)
    merged = merge(x)
    assert merged.shape == (1, 13, 6)
    back = unmerge(merged)
    changed = [i for i in range(16) if not torch.allclose(back[0, i], x[0, i])]
    # 4 destinations (one per 2x2 cell) each become the mean of themselves and their merged sources; the
    # 3 merged sources take their destination's mean; the 9 other sources are untouched.
    groups: dict[tuple, list[int]] = {}
    for i in range(16):
        groups.setdefault(tuple(back[0, i].tolist()), []).append(i)
    merged_groups = [g for g in groups.values() if len(g) > 1]
    assert sum(len(g) - 1 for g in merged_groups) == 3
    for members in merged_groups:
        torch.testing.assert_close(back[0, members[0]], x[0, members].mean(0))
    assert set(changed) <= {i for g in merged_groups for i in g}
    assert T.bipartite_merge(x, 4, 4, 0)[0] is T.bipartite_merge(x, 4, 4, 0)[1]


def test_tome_patch_model_changes_the_prediction_and_ratio_0_does_not(env):
    model, _, conds, x = env
    T = builtin("token_merging")
    (none,) = T.tome_patch_model(model=model, ratio=0.0)
    torch.testing.assert_close(predict(none, conds, x), predict(model, conds, x), rtol=1e-5, atol=1e-5)
    (half,) = T.tome_patch_model(model=model, ratio=0.5)
    torch.manual_seed(0)
    assert not torch.allclose(predict(half, conds, x), predict(model, conds, x), atol=1e-4)
    assert "patches" not in model.model_options["transformer_options"]


@pytest.mark.parametrize(
    ("node", "sampling", "sigma_data", "time"),
    [
        ("model_sampling_continuous_edm", "v_prediction", 1.0, lambda s: 0.25 * np.log(s)),
        ("model_sampling_continuous_edm", "edm", 0.5, lambda s: 0.25 * np.log(s)),
        ("model_sampling_continuous_edm", "eps", 1.0, lambda s: 0.25 * np.log(s)),
        ("model_sampling_continuous_v", "v_prediction", 1.0, lambda s: np.arctan(s) / np.pi * 2),
    ],
)
def test_continuous_model_samplings_match_their_parameterisations(env, node, sampling, sigma_data, time):
    model, _, conds, x = env
    (patched,) = getattr(S, node)(model=model, sampling=sampling, sigma_max=120.0, sigma_min=0.002)
    ms = patched.model_sampling
    np.testing.assert_allclose(
        ms.sigmas.numpy(), np.exp(np.linspace(np.log(0.002), np.log(120.0), 1000)), rtol=1e-5
    )
    assert ms.percent_to_sigma(0.5) == pytest.approx(np.sqrt(0.002 * 120.0), rel=1e-6)
    s = float(SIGMA)
    got = predict(patched, conds, x, kind="basic")
    # The raw network output at the scaled input and this schedule's timestep, then the parameterisation.
    with torch.no_grad(), model.use() as unet:
        t = torch.tensor([float(time(s))])
        out = unet(x / (s * s + sigma_data**2) ** 0.5, t, context=conds["positive"][0][0])
    sd2 = sigma_data**2
    expected = {
        "eps": x - out * s,
        "v_prediction": x * sd2 / (s * s + sd2) - out * s * sigma_data / (s * s + sd2) ** 0.5,
        "edm": x * sd2 / (s * s + sd2) + out * s * sigma_data / (s * s + sd2) ** 0.5,
    }[sampling]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model.model_sampling.prediction == "eps" and model.model_sampling.sigma_max < 20
    with pytest.raises(ValueError, match="cosmos_rflow"):
        S.model_sampling_continuous_edm(
            model=model, sampling="cosmos_rflow", sigma_max=120.0, sigma_min=0.002
        )


def test_torch_compile_model_is_a_clone_that_asks_for_compilation(env):
    # Compiled predictions against eager ones: tests/unit/speed/test_compiling.py (slow: inductor compiles).
    from engine.diffusion.compiling import CompileSettings, settings_for

    model, _, conds, x = env
    (compiled,) = P.torch_compile_model(model=model, backend="inductor")
    assert compiled is not model and compiled.model_options == model.model_options
    assert settings_for(compiled) == CompileSettings("inductor") and settings_for(model) is None


def test_chained_patches_sample_end_to_end(env):
    model, _, conds, _ = env
    (m,) = P.freeu_v2(model=model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)
    (m,) = G.rescale_cfg(model=m, multiplier=0.7)
    (m,) = G.perturbed_attention_guidance(model=m, scale=3.0)
    (m,) = G.self_attention_guidance(model=m, scale=0.5, blur_sigma=2.0)
    (m,) = P.differential_diffusion(model=m, strength=1.0)
    guider = sampling.Guider(m, "cfg", {"positive": conds["positive"], "negative": conds["negative"]}, 4.0)
    latent = {"samples": torch.zeros(1, 4, 16, 16), "noise_mask": torch.linspace(0, 1, 16).expand(1, 16, 16)}
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
    spec = sampling_library().sampler("euler")
    out, _ = sampling.custom_sample(sampling.RandomNoise(7), guider, spec, sigmas, latent)
    plain = sampling.Guider(model, "cfg", guider.conds, 4.0)
    ref, _ = sampling.custom_sample(sampling.RandomNoise(7), plain, spec, sigmas, latent)
    assert torch.isfinite(out["samples"]).all() and not torch.allclose(
        out["samples"], ref["samples"], atol=1e-3
    )
