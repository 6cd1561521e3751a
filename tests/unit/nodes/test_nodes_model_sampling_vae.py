"""Sampling, custom-sampling and VAE nodes on a tiny random SD1 checkpoint; handles (clones, patches)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.errors import ExecutionInterrupted
from engine.handles import load_checkpoint_handles
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

C, CS, S, V = (builtin(name) for name in ("conditioning", "custom_sampling", "sampling", "vae_nodes"))


def ctx() -> Any:
    return node_context()[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "sd1.safetensors", "sd1", seed=1)
    manager = ModelManager(select_device(MemoryOptions()))
    model, clip, vae = load_checkpoint_handles(path, manager=manager)
    pos = C.clip_text_encode(text="a red house", clip=clip)[0]
    neg = C.clip_text_encode(text="", clip=clip)[0]
    return model, clip, vae, pos, neg


def ks(model, pos, neg, latent, **kw):
    args = dict(seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    args.update(kw)
    args.setdefault("context", ctx())
    return S.ksampler(model=model, positive=pos, negative=neg, latent_image=latent, **args)[0]


@pytest.mark.slow
def test_ksampler_seed_progress_preview(tiny):
    model, _, _, pos, neg = tiny
    lat = {"samples": torch.zeros(2, 4, 8, 8)}
    context, sink = node_context()
    a = ks(model, pos, neg, lat, context=context)
    assert a["samples"].shape == (2, 4, 8, 8) and torch.isfinite(a["samples"]).all()
    assert [r[:2] for r in sink.reports] == [(1, 3), (2, 3), (3, 3)]
    preview = sink.reports[-1][2]
    assert preview.mode == "RGB" and preview.size == (8, 8)
    assert torch.equal(ks(model, pos, neg, lat)["samples"], a["samples"])
    assert not torch.allclose(ks(model, pos, neg, lat, seed=2)["samples"], a["samples"])
    assert "noise_mask" not in a and lat["samples"].abs().sum() == 0  # input untouched


def test_ksampler_renders_previews_only_for_a_sink_that_shows_them(tiny):
    """The CLI's sink shows no previews: progress is reported every step, no preview is rendered."""
    model, _, _, pos, neg = tiny
    context, sink = node_context(previews=False)
    ks(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, context=context)
    assert sink.reports == [(1, 3, None), (2, 3, None), (3, 3, None)]


def test_ksampler_interrupt_stops(tiny):
    model, _, _, pos, neg = tiny
    context, sink = node_context(stop_after=1)
    with pytest.raises(ExecutionInterrupted):
        ks(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, steps=5, context=context)
    assert len(sink.reports) == 1


def test_ksampler_denoise_and_noise_mask(tiny):
    model, _, _, pos, neg = tiny
    g = torch.Generator().manual_seed(0)
    src = torch.randn(1, 4, 8, 8, generator=g)
    near = ks(model, pos, neg, {"samples": src}, steps=4, denoise=0.3)["samples"]
    far = ks(model, pos, neg, {"samples": src}, steps=4, denoise=1.0)["samples"]
    assert (near - src).abs().mean() < (far - src).abs().mean()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, 4:] = 1.0
    out = ks(model, pos, neg, {"samples": src, "noise_mask": mask}, steps=3)
    # Kept as it was, to the rounding of the trip into the model's space and back (x · scale / scale).
    torch.testing.assert_close(out["samples"][..., :3], src[..., :3], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out["samples"][..., 5:], src[..., 5:])
    assert out["noise_mask"] is mask


def test_ksampler_advanced_split_equals_full(tiny):
    model, _, _, pos, neg = tiny
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    common = dict(model=model, noise_seed=3, steps=4, cfg=4.0, sampler_name="euler", scheduler="normal",
                  positive=pos, negative=neg, context=ctx())  # fmt: skip
    full = S.ksampler_advanced(add_noise="enable", latent_image=lat, start_at_step=0, end_at_step=10000,
                               return_with_leftover_noise="disable", **common)[0]  # fmt: skip
    first = S.ksampler_advanced(add_noise="enable", latent_image=lat, start_at_step=0, end_at_step=2,
                                return_with_leftover_noise="enable", **common)[0]  # fmt: skip
    second = S.ksampler_advanced(add_noise="disable", latent_image=first, start_at_step=2, end_at_step=10000,
                                 return_with_leftover_noise="disable", **common)[0]  # fmt: skip
    assert torch.allclose(second["samples"], full["samples"], atol=1e-4)
    assert not torch.allclose(first["samples"], full["samples"], atol=1e-3)  # stopped part-way
    same = ks(model, pos, neg, lat, seed=3, steps=4, cfg=4.0)
    assert torch.allclose(full["samples"], same["samples"], atol=1e-5)


@pytest.mark.slow
def test_custom_sampling_matches_ksampler(tiny):
    model, _, _, pos, neg = tiny
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    (sampler,) = CS.ksampler_select(sampler_name="euler", context=ctx())
    (sigmas,) = CS.basic_scheduler(model=model, scheduler="normal", steps=3, denoise=1.0, context=ctx())
    assert sigmas.shape == (4,) and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())
    ref = ks(model, pos, neg, lat, seed=7, cfg=5.0)["samples"]
    out, den = CS.sampler_custom(model=model, add_noise=True, noise_seed=7, cfg=5.0, positive=pos, negative=neg,
                                 sampler=sampler, sigmas=sigmas, latent_image=lat, context=ctx())  # fmt: skip
    assert torch.allclose(out["samples"], ref, atol=1e-5) and den["samples"].shape == ref.shape
    (noise,) = CS.random_noise(noise_seed=7)
    (guider,) = CS.cfg_guider(model=model, positive=pos, negative=neg, cfg=5.0)
    context, sink = node_context()
    out2, _ = CS.sampler_custom_advanced(noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                                         latent_image=lat, context=context)  # fmt: skip
    assert torch.allclose(out2["samples"], ref, atol=1e-5) and len(sink.reports) == 3
    # DualCFG with cond2 == negative and cfg_cond2_negative=1 reduces to CFG(cond1, negative, cfg_conds).
    (dual,) = CS.dual_cfg_guider(model=model, cond1=pos, cond2=neg, negative=neg, cfg_conds=5.0,
                                 cfg_cond2_negative=1.0, style="regular")  # fmt: skip
    out3, _ = CS.sampler_custom_advanced(
        noise=noise, guider=dual, sampler=sampler, sigmas=sigmas, latent_image=lat, context=ctx()
    )
    assert torch.allclose(out3["samples"], ref, rtol=1e-4, atol=1e-3)
    (basic,) = CS.basic_guider(model=model, conditioning=pos)
    (cfg1,) = CS.cfg_guider(model=model, positive=pos, negative=neg, cfg=1.0)
    a = CS.sampler_custom_advanced(
        noise=noise, guider=basic, sampler=sampler, sigmas=sigmas, latent_image=lat, context=ctx()
    )[0]
    b = CS.sampler_custom_advanced(
        noise=noise, guider=cfg1, sampler=sampler, sigmas=sigmas, latent_image=lat, context=ctx()
    )[0]
    assert torch.allclose(a["samples"], b["samples"], atol=1e-6)
    (off,) = CS.disable_noise()
    kept = CS.sampler_custom_advanced(
        noise=off, guider=basic, sampler=sampler, sigmas=sigmas[:1], latent_image=lat, context=ctx()
    )
    assert torch.equal(kept[0]["samples"], lat["samples"])


def test_sigma_nodes(tiny):
    model = tiny[0]
    (k,) = CS.karras_scheduler(steps=5, sigma_max=14.6, sigma_min=0.03, rho=7.0)
    assert k.shape == (6,) and abs(float(k[0]) - 14.6) < 1e-4 and abs(float(k[4]) - 0.03) < 1e-5 and k[5] == 0
    (e,) = CS.exponential_scheduler(steps=3, sigma_max=10.0, sigma_min=0.1)
    assert torch.allclose(e[:3].log(), torch.tensor([10.0, 1.0, 0.1]).log(), atol=1e-5)
    (t,) = CS.sd_turbo_scheduler(model=model, steps=1, denoise=1.0)
    assert (
        t.shape == (2,)
        and abs(float(t[0]) - model.model_sampling.sigma_max) / model.model_sampling.sigma_max < 1e-3
    )
    hi, lo = CS.split_sigmas(sigmas=k, step=2)
    assert torch.equal(hi, k[:3]) and torch.equal(lo, k[2:])
    (f,) = CS.flip_sigmas(sigmas=k)
    assert float(f[0]) == pytest.approx(1e-4) and torch.equal(f[1:], k.flip(0)[1:])


def test_vae_nodes_shapes_ranges_tiles(tiny):
    _, _, vae, _, _ = tiny
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 35, 33, 3, generator=g)  # cropped to multiples of the cell (2 for the tiny VAE)
    (lat,) = V.vae_encode(pixels=img, vae=vae)
    assert lat["samples"].shape == (2, 4, 17, 16)
    (dec,) = V.vae_decode(samples=lat, vae=vae)
    assert dec.shape == (2, 34, 32, 3) and float(dec.min()) >= 0.0 and float(dec.max()) <= 1.0
    big = {"samples": torch.randn(1, 4, 48, 48, generator=g)}
    (whole,) = V.vae_decode(samples=big, vae=vae)
    (tiled,) = V.vae_decode_tiled(
        samples=big, vae=vae, tile_size=64, overlap=16, temporal_size=64, temporal_overlap=8
    )
    assert tiled.shape == whole.shape == (1, 96, 96, 3)
    assert (
        tiled - whole
    ).abs().mean() < 0.1  # a random VAE's attention sees the whole image; tiles differ a bit
    (enc_t,) = V.vae_encode_tiled(
        pixels=whole, vae=vae, tile_size=64, overlap=16, temporal_size=64, temporal_overlap=8
    )
    assert enc_t["samples"].shape == (1, 4, 48, 48)


def test_vae_encode_for_inpaint_and_inpaint_model_conditioning(tiny):
    _, _, vae, pos, neg = tiny
    img = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 16, 16)
    mask[:, 6:10, 6:10] = 1.0
    (lat,) = V.vae_encode_for_inpaint(pixels=img, vae=vae, mask=mask, grow_mask_by=3)
    nm = lat["noise_mask"]
    assert lat["samples"].shape == (1, 4, 8, 8) and nm.shape == (1, 1, 16, 16)
    assert nm[0, 0, 5:11, 5:11].all() and nm.sum() == 36  # grown by one pixel each side
    # masked pixels are encoded as grey: same latent as encoding the greyed image
    grey = img.clone()
    grey[:, 6:10, 6:10, :] = 0.5
    assert torch.allclose(lat["samples"], vae.encode(grey), atol=1e-6)
    p2, n2, lat2 = V.inpaint_model_conditioning(
        positive=pos, negative=neg, vae=vae, pixels=img, mask=mask, noise_mask=True
    )
    assert torch.allclose(p2[0][1]["concat_latent_image"], vae.encode(grey), atol=1e-6)
    assert p2[0][1]["concat_mask"].shape == (1, 1, 16, 16) and "concat_mask" in n2[0][1]
    assert torch.allclose(lat2["samples"], vae.encode(img), atol=1e-6) and "noise_mask" in lat2
    assert "concat_mask" not in pos[0][1]
    _, _, lat3 = V.inpaint_model_conditioning(
        positive=pos, negative=neg, vae=vae, pixels=img, mask=mask, noise_mask=False
    )
    assert "noise_mask" not in lat3


def test_model_clone_patches_are_per_clone(tiny):
    model, clip, _, pos, neg = tiny
    clone = model.clone()
    assert clone.unet is model.unet and clone.patcher is not model.patcher
    clone.transformer_options["marker"] = 1
    assert "marker" not in model.model_options.get("transformer_options", {})
    key = "out.2.bias"
    bias = dict(model.unet.named_parameters())[key]
    clone.add_patches({key: torch.full_like(bias, 0.5)})
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    base = ks(model, pos, neg, lat)["samples"]
    patched = ks(clone, pos, neg, lat)["samples"]
    again = ks(model, pos, neg, lat)["samples"]
    assert not torch.allclose(base, patched) and torch.equal(base, again)
    c2 = clip.clone()
    assert c2.encoder is clip.encoder and c2.patcher is not clip.patcher
