"""Loader and conditioning nodes on tiny random checkpoints in the real file format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.errors import WorkflowValidationError
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import Location, ModelManager
from engine.runtime import build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

C, L = (builtin(name) for name in ("conditioning", "loaders"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("models_env")
    ck = root / "models" / "checkpoints"
    write_tiny_checkpoint(ck / "sd1.safetensors", "sd1", seed=1)
    write_tiny_checkpoint(ck / "sdxl.safetensors", "sdxl", seed=2)
    write_tiny_checkpoint(ck / "novae.safetensors", "sd1", seed=3, with_vae=False)
    (ck / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    folders = Folders.create(root)
    ctx = node_context(folders=folders, manager=ModelManager(select_device(MemoryOptions())))[0]
    sd1 = L.checkpoint_loader_simple(ckpt_name="sd1.safetensors", context=ctx)
    sdxl = L.checkpoint_loader_simple(ckpt_name="sdxl.safetensors", context=ctx)
    return root, ctx, sd1, sdxl


def test_checkpoint_loader_outputs_and_registration(env):
    _, ctx, (model, clip, vae), _ = env
    assert model.family == "sd1" and clip.family == "sd1" and vae.downscale == 2
    manager = ctx.models
    names = [m.name for m in manager.models]
    assert any("UNet" in n for n in names) and any("VAE" in n for n in names)
    assert any("text encoder" in n for n in names)
    # Weights are on the offload device until used; the UNet handle is a registered model.
    assert model.patcher.handle in manager.models
    assert model.patcher.handle.location in (Location.OFFLOADED, Location.DEVICE)


def test_checkpoint_without_vae_gives_none_and_vae_node_explains(env):
    _, ctx, _, _ = env
    vae_nodes = builtin("vae_nodes")
    model, clip, vae = L.checkpoint_loader_simple(ckpt_name="novae.safetensors", context=ctx)
    assert vae is None and model is not None and clip is not None
    with pytest.raises(ValueError, match="VAELoader"):
        vae_nodes.vae_decode(samples={"samples": torch.zeros(1, 4, 8, 8)}, vae=vae)


def test_corrupt_checkpoint_error_names_the_file(env):
    _, ctx, _, _ = env
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        L.checkpoint_loader_simple(ckpt_name="corrupt.safetensors", context=ctx)


def test_missing_checkpoint_is_a_validation_error_listing_choices(env):
    root, _, _, _ = env
    runtime = build_runtime(Folders.create(root), load_custom_nodes=False)
    wf = parse_api_workflow(
        {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.safetensors"}}}
    )
    with pytest.raises(WorkflowValidationError) as info:
        runtime.executor.run(wf, targets=["4"])
    text = str(info.value) + repr(getattr(info.value, "errors", ""))
    assert "nope.safetensors" in text and "sd1.safetensors" in text and "sdxl.safetensors" in text


def test_choices_refresh_without_restart(env):
    root, _, _, _ = env
    runtime = build_runtime(Folders.create(root), load_custom_nodes=False, with_models=False)
    schema = runtime.registry.object_info()["CheckpointLoaderSimple"]
    before = schema["input"]["required"]["ckpt_name"][0]
    write_tiny_checkpoint(Path(root) / "models" / "checkpoints" / "zz_new.safetensors", "sd1", seed=9)
    after = runtime.registry.object_info()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "zz_new.safetensors" not in before and "zz_new.safetensors" in after
    (Path(root) / "models" / "checkpoints" / "zz_new.safetensors").unlink()


def test_vae_and_clip_loaders_standalone_files(env, tmp_path):
    root, ctx, (_, clip, vae), _ = env
    from safetensors.torch import load_file, save_file

    sd = load_file(str(Path(root) / "models" / "checkpoints" / "sd1.safetensors"))
    vae_sd = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    clip_sd = {
        k[len("cond_stage_model.transformer.") :]: v
        for k, v in sd.items()
        if k.startswith("cond_stage_model.transformer.")
    }
    (Path(root) / "models" / "vae").mkdir(parents=True, exist_ok=True)
    (Path(root) / "models" / "text_encoders").mkdir(parents=True, exist_ok=True)
    save_file(vae_sd, str(Path(root) / "models" / "vae" / "v.safetensors"))
    save_file(clip_sd, str(Path(root) / "models" / "text_encoders" / "c.safetensors"))
    (vae2,) = L.vae_loader(vae_name="v.safetensors", context=ctx)
    (clip2,) = L.clip_loader(clip_name="c.safetensors", type="stable_diffusion", context=ctx)
    lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(vae2.decode(lat), vae.decode(lat), atol=1e-6)
    a = clip2.encode_conditioning("a photo of a cat")[0][0]
    b = clip.encode_conditioning("a photo of a cat")[0][0]
    assert torch.allclose(a, b, atol=1e-6)


def test_clip_text_encode_shapes_and_prompt_sensitivity(env):
    _, _, (_, clip, _), (_, xl_clip, _) = env
    (c1,) = C.clip_text_encode(text="a cat", clip=clip)
    (c2,) = C.clip_text_encode(text="a dog", clip=clip)
    assert len(c1) == 1 and c1[0][0].shape[:2] == (1, 77) and c1[0][0].dtype == torch.float32
    assert not torch.allclose(c1[0][0], c2[0][0])
    long = C.clip_text_encode(text=" ".join(["cat"] * 100), clip=clip)[0]
    assert long[0][0].shape[1] == 154  # two 77-token chunks
    (xl,) = C.clip_text_encode(text="a cat", clip=xl_clip)
    assert xl[0][1]["pooled_output"].shape[0] == 1
    with pytest.raises(ValueError, match="CLIPLoader"):
        C.clip_text_encode(text="x", clip=None)


def test_clip_set_last_layer_clones(env):
    _, _, (_, clip, _), _ = env
    (skipped,) = C.clip_set_last_layer(clip=clip, stop_at_clip_layer=-2)
    assert skipped is not clip and skipped.clip_skip == -2 and clip.clip_skip is None
    assert skipped.encoder is clip.encoder  # weights shared
    a = C.clip_text_encode(text="a cat", clip=clip)[0][0][0]
    b = C.clip_text_encode(text="a cat", clip=skipped)[0][0][0]
    assert not torch.allclose(a, b)


def cond(value: float, tokens: int = 77, width: int = 8, **opts: Any) -> list[list[Any]]:
    return [[torch.full((1, tokens, width), value), dict(opts)]]


def test_combine_concat_average():
    a, b = cond(1.0, pooled_output=torch.ones(1, 4)), cond(3.0, pooled_output=torch.full((1, 4), 3.0))
    (comb,) = C.conditioning_combine(conditioning_1=a, conditioning_2=b)
    assert len(comb) == 2 and comb[0][0] is a[0][0] and comb[1][0] is b[0][0]
    (cat,) = C.conditioning_concat(conditioning_to=a, conditioning_from=b)
    assert cat[0][0].shape == (1, 154, 8) and cat[0][0][0, 100, 0] == 3.0
    (avg,) = C.conditioning_average(conditioning_to=a, conditioning_from=b, conditioning_to_strength=0.25)
    assert torch.allclose(avg[0][0], torch.full((1, 77, 8), 0.25 * 1 + 0.75 * 3))
    assert torch.allclose(avg[0][1]["pooled_output"], torch.full((1, 4), 2.5))
    # inputs untouched
    assert a[0][0][0, 0, 0] == 1.0 and a[0][1]["pooled_output"][0, 0] == 1.0
    # shorter 'from' is zero-padded to the length of 'to'
    (avg2,) = C.conditioning_average(
        conditioning_to=cond(1.0, tokens=154), conditioning_from=cond(3.0), conditioning_to_strength=0.5
    )
    assert avg2[0][0][0, 0, 0] == 2.0 and avg2[0][0][0, 100, 0] == 0.5


def test_area_mask_strength_timestep_zero_out():
    base = cond(1.0, pooled_output=torch.ones(1, 4))
    (area,) = C.conditioning_set_area(conditioning=base, width=256, height=128, x=64, y=32, strength=0.7)
    assert area[0][1]["area"] == (16, 32, 4, 8) and area[0][1]["strength"] == 0.7
    assert "area" not in base[0][1]
    (pct,) = C.conditioning_set_area_percentage(
        conditioning=base, width=0.5, height=0.25, x=0.5, y=0.0, strength=1.0
    )
    assert pct[0][1]["area"] == ("percentage", 0.25, 0.5, 0.0, 0.5)
    (st,) = C.conditioning_set_area_strength(conditioning=area, strength=2.0)
    assert st[0][1]["strength"] == 2.0 and st[0][1]["area"] == (16, 32, 4, 8)
    (mk,) = C.conditioning_set_mask(
        conditioning=base, mask=torch.ones(16, 16), strength=0.5, set_cond_area="mask bounds"
    )
    assert mk[0][1]["mask"].shape == (1, 16, 16) and mk[0][1]["set_area_to_bounds"] is True
    assert mk[0][1]["mask_strength"] == 0.5
    (tr,) = C.conditioning_set_timestep_range(conditioning=base, start=0.2, end=0.8)
    assert (tr[0][1]["start_percent"], tr[0][1]["end_percent"]) == (0.2, 0.8)
    (z,) = C.conditioning_zero_out(conditioning=base)
    assert not z[0][0].any() and not z[0][1]["pooled_output"].any() and base[0][0].all()


def test_sdxl_text_encode_and_refiner_options(env):
    _, _, _, (_, xl_clip, _) = env
    (same,) = C.clip_text_encode_sdxl(
        clip=xl_clip, width=1024, height=768, crop_w=0, crop_h=16, target_width=1024, target_height=768,
        text_g="a cat", text_l="a cat",
    )  # fmt: skip
    opts = same[0][1]
    assert (opts["width"], opts["height"], opts["crop_h"], opts["target_height"]) == (1024, 768, 16, 768)
    assert opts["pooled_output"].ndim == 2
    plain = C.clip_text_encode(text="a cat", clip=xl_clip)[0]
    assert torch.allclose(same[0][0], plain[0][0])
    (diff,) = C.clip_text_encode_sdxl(
        clip=xl_clip, width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024,
        text_g="a cat", text_l="a dog",
    )  # fmt: skip
    width_l = xl_clip.encoder._width("clip_l")
    dog = C.clip_text_encode(text="a dog", clip=xl_clip)[0][0][0]
    assert torch.allclose(diff[0][0][..., :width_l], dog[..., :width_l])
    assert torch.allclose(diff[0][0][..., width_l:], plain[0][0][..., width_l:])
    assert torch.allclose(diff[0][1]["pooled_output"], opts["pooled_output"])
    (ref,) = C.clip_text_encode_sdxl_refiner(ascore=2.5, width=512, height=512, text="x", clip=xl_clip)
    assert ref[0][1]["aesthetic_score"] == 2.5 and ref[0][1]["width"] == 512


def test_unet_loader_original_and_diffusers_layouts(tmp_path):
    """UNETLoader reads a bare UNet (original keys with or without the prefix, or diffusers keys); the
    family comes from the UNet alone, so the test UNet is small but has SD1's 768-wide cross-attention."""
    from safetensors.torch import save_file

    from engine.diffusion.checkpoints.diffusers_layout import unet_original_to_diffusers
    from engine.diffusion.models.unet import UNetConfig, UNetModel

    config = UNetConfig.from_levels(
        channel_mult=(1, 2), num_res_blocks=1, level_depth=(1, 1), middle_depth=1,
        model_channels=32, context_dim=768, num_heads=8,
    )  # fmt: skip
    torch.manual_seed(0)
    unet = UNetModel(config)
    weights = {k: v.contiguous() for k, v in unet.state_dict().items()}
    folder = tmp_path / "models" / "unet"
    folder.mkdir(parents=True)
    save_file({f"model.diffusion_model.{k}": v for k, v in weights.items()}, folder / "prefixed.safetensors")
    save_file(unet_original_to_diffusers(weights), folder / "diffusers.safetensors")
    ctx = node_context(
        folders=Folders.create(tmp_path), manager=ModelManager(select_device(MemoryOptions()))
    )[0]

    x, t, context = torch.randn(1, 4, 16, 16), torch.tensor([500.0]), torch.randn(1, 77, 768)
    with torch.no_grad():
        expected = unet(x, t, context=context)
    for name in ("prefixed.safetensors", "diffusers.safetensors"):
        (model,) = L.unet_loader(unet_name=name, weight_dtype="default", context=ctx)
        assert model.family == "sd1" and model.unet.config == config
        with torch.no_grad():
            assert torch.allclose(model.unet(x, t, context=context), expected, atol=1e-5), name
    (folder / "not_a_unet.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(Exception, match="not_a_unet.safetensors"):
        L.unet_loader(unet_name="not_a_unet.safetensors", weight_dtype="default", context=ctx)
