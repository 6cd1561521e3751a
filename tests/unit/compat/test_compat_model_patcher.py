"""MODEL / CLIP / VAE values present ComfyUI's object surface (ModelPatcher, CLIP, VAE) and the patches
packs set through it reach sampling: tiny random SD1 / SDXL checkpoints through the real loaders and
the built-in nodes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from engine.handles import ModelHandle, load_checkpoint_handles
from engine.handles.comfy_surface import model_sampling as ms
from engine.handles.comfy_surface.attention import optimized_attention
from engine.handles.comfy_surface.base_model import BaseModel, ModelType
from engine.handles.comfy_surface.latents import SD15
from engine.memory.devices import DeviceInfo
from engine.memory.manager import ModelManager
from engine.memory.weight_patches import DiffPatch
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

ENV = Path(__file__).resolve().parents[3] / "engine" / "comfy_compat" / "env"
C, S, V = (builtin(name) for name in ("conditioning", "sampling", "vae_nodes"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "sd1.safetensors", "sd1", seed=1)
    model, clip, vae = load_checkpoint_handles(path, manager=ModelManager(DeviceInfo.cpu()))
    pos = C.clip_text_encode(text="a red house", clip=clip)[0]
    neg = C.clip_text_encode(text="", clip=clip)[0]
    return model, clip, vae, pos, neg


def sample(model, pos, neg, cfg: float = 5.0) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    args = dict(seed=3, steps=2, cfg=cfg, sampler_name="euler", scheduler="normal", denoise=1.0)
    out = S.ksampler(
        model=model, positive=pos, negative=neg, latent_image=latent, context=node_context()[0], **args
    )
    return out[0]["samples"]


def load_env(relative: str) -> Any:
    spec = importlib.util.spec_from_file_location("probe_" + relative.replace("/", "_"), ENV / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_model_is_a_comfyui_model_patcher(tiny) -> None:
    model = tiny[0]
    mp = load_env("comfy/model_patcher.py")
    assert mp.ModelPatcher is ModelHandle and isinstance(model, mp.ModelPatcher)
    assert isinstance(model.clone(), mp.ModelPatcher)


def test_model_object_surface(tiny) -> None:
    model = tiny[0]
    base = model.model
    assert isinstance(base, BaseModel) and base.diffusion_model is model.unet
    assert base.model_type is ModelType.EPS and isinstance(base.latent_format, SD15)
    assert base.latent_format.scale_factor == 0.18215 and len(base.latent_format.latent_rgb_factors) == 4
    assert base.model_sampling is model.model_sampling is model.get_model_object("model_sampling")
    assert isinstance(base.model_sampling, ms.EPS) and not isinstance(base.model_sampling, ms.V_PREDICTION)
    assert base.get_dtype() == model.model_dtype() == torch.float32
    keys = list(base.state_dict())
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    assert model.model_state_dict().keys() == base.state_dict().keys()
    assert model.load_device == torch.device("cpu") and model.current_loaded_device() == torch.device("cpu")
    assert model.model_size() > 0 and model.is_clone(model.clone()) and model.clone().model is not base
    assert base.model_config.unet_config["context_dim"] == model.unet.config.context_dim
    assert model.get_model_object("diffusion_model.input_blocks") is model.unet.input_blocks
    assert base.memory_required([2, 4, 8, 8]) > base.memory_required([1, 4, 8, 8]) > 0


def test_attention_patch_on_a_clone_changes_only_the_clone(tiny) -> None:
    model, _, _, pos, neg = tiny
    before = sample(model, pos, neg)
    clone = model.clone()
    clone.set_model_attn2_patch(lambda n, context, value, extra: (n, context, value * 3.0))
    assert "patches" not in model.model_options["transformer_options"]
    assert len(clone.model_options["transformer_options"]["patches"]["attn2_patch"]) == 1
    assert not torch.allclose(sample(clone, pos, neg), before, atol=1e-4)
    assert torch.equal(sample(model, pos, neg), before)


def test_plain_attention_replace_through_sampling_is_bit_identical(tiny) -> None:
    model, _, _, pos, neg = tiny
    clone = model.clone()
    for kind, number in (("input", 1), ("middle", 0), ("output", 2)):
        clone.set_model_attn1_replace(
            lambda q, k, v, e: optimized_attention(q, k, v, e["n_heads"]), kind, number
        )
    table = clone.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert set(table) == {("input", 1), ("middle", 0), ("output", 2)}
    assert torch.equal(sample(clone, pos, neg), sample(model, pos, neg))


class _Stacked:
    """An IPAdapter-like patch object that packs extend in place on a clone (``add``)."""

    def __init__(self, weight: float) -> None:
        self.weights = [weight]

    def add(self, weight: float) -> None:
        self.weights.append(weight)

    def __call__(self, q, k, v, extra):
        return optimized_attention(q, k, v * (1.0 + sum(self.weights)), extra["n_heads"])


def test_clone_deep_copies_patch_objects_so_in_place_additions_stay_on_the_clone(tiny) -> None:
    model = tiny[0]
    first = model.clone()
    first.set_model_attn2_replace(_Stacked(0.5), "input", 1, 0)
    second = first.clone()
    second.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)].add(0.25)
    assert first.model_options["transformer_options"]["patches_replace"]["attn2"][
        ("input", 1, 0)
    ].weights == [0.5]


def test_cfg_function_returning_cond_equals_cfg_1_and_the_wrapper_runs_once_per_step(tiny) -> None:
    model, _, _, pos, neg = tiny
    clone = model.clone()
    clone.set_model_sampler_cfg_function(lambda args: args["cond"])
    # Batch 2 (cond + uncond) against batch 1: equal up to the kernels' rounding (the random model's
    # latents reach ~340; batch-1 and batch-2 products round differently, ~2e-4 apart with either library).
    torch.testing.assert_close(
        sample(clone, pos, neg, cfg=8.0), sample(model, pos, neg, cfg=1.0), atol=1e-3, rtol=1e-5
    )
    calls: list[list[int]] = []

    def wrapper(apply_model, args):
        calls.append(args["cond_or_uncond"])
        return apply_model(args["input"], args["timestep"], **args["c"])

    wrapped = model.clone()
    wrapped.set_model_unet_function_wrapper(wrapper)
    assert torch.equal(sample(wrapped, pos, neg), sample(model, pos, neg))
    assert calls == [[0, 1], [0, 1]]
    old_style = model.clone()
    old_style.set_model_sampler_cfg_function(lambda cond, uncond, scale: cond, disable_cfg1_optimization=True)
    assert old_style.model_options["disable_cfg1_optimization"] is True


def test_object_patched_model_sampling_is_used_for_sampling(tiny) -> None:
    model, _, _, pos, neg = tiny

    class VSampling(ms.ModelSamplingDiscrete, ms.V_PREDICTION):  # as packs build them
        pass

    patched = model.clone()
    patched.add_object_patch("model_sampling", VSampling(patched.model.model_config))
    assert isinstance(patched.get_model_object("model_sampling"), VSampling)
    reference = model.clone()
    reference.model_sampling = ModelSamplingDiscrete("v")
    assert torch.equal(sample(patched, pos, neg), sample(reference, pos, neg))
    assert model.get_model_object("model_sampling").prediction == "eps"


def test_add_patches_takes_comfyui_keys_and_values(tiny) -> None:
    model, _, _, pos, neg = tiny
    key = "input_blocks.1.1.proj_in.weight"
    weight = model.unet.state_dict()[key]
    diff = torch.full_like(weight, 0.01)
    ours = model.clone()
    assert ours.add_patches({key: DiffPatch(diff)}, 0.5) == [key]
    theirs = model.clone()
    matched = theirs.add_patches({"diffusion_model." + key: (diff,), "diffusion_model.nope": (diff,)}, 0.5)
    assert matched == ["diffusion_model." + key]
    assert torch.equal(sample(theirs, pos, neg), sample(ours, pos, neg))
    assert not torch.equal(sample(theirs, pos, neg), sample(model, pos, neg))
    up, down = torch.randn(weight.shape[0], 2), torch.randn(2, weight.shape[1])
    lora = model.clone()
    lora.add_patches({"diffusion_model." + key: ("lora", (up, down, 2.0, None, None, None))})
    diff_lora = model.clone()
    diff_lora.add_patches({key: (up @ down).reshape(weight.shape)})
    assert torch.allclose(sample(lora, pos, neg), sample(diff_lora, pos, neg), atol=1e-5)
    patches = theirs.get_key_patches("diffusion_model.input_blocks.1.1.proj_in")
    entries = patches["diffusion_model." + key]
    assert torch.equal(entries[0][0], weight) and entries[1][0] == 0.5


def test_patcher_extension_registries_are_per_clone(tiny) -> None:
    model = tiny[0]
    clone = model.clone()
    clone.add_wrapper_with_key("diffusion_model", "pack", lambda executor, *a, **k: executor(*a, **k))
    clone.set_attachments("pack", {"x": 1})
    assert (
        model.get_all_wrappers("diffusion_model") == []
        and len(clone.get_all_wrappers("diffusion_model")) == 1
    )
    assert clone.clone().get_attachment("pack") == {"x": 1}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_clip_tokenize_and_encode_from_tokens_equal_clip_text_encode(tmp_path, family) -> None:
    path = write_tiny_checkpoint(tmp_path / f"{family}.safetensors", family, seed=2)
    _, clip, _ = load_checkpoint_handles(path, manager=ModelManager(DeviceInfo.cpu()))
    text = "a (red:1.3) house, long shadows"
    tokens = clip.tokenize(text)
    assert set(tokens) == ({"l"} if family == "sd1" else {"g", "l"})
    chunk = tokens["l"][0]
    assert len(chunk) == 77 and chunk[0] == (49406, 1.0) and any(w == pytest.approx(1.3) for _, w in chunk)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    (conditioning,) = C.clip_text_encode(text=text, clip=clip)
    assert torch.equal(cond, conditioning[0][0])
    if family == "sdxl":
        assert torch.equal(pooled, conditioning[0][1]["pooled_output"])
    as_dict = clip.encode_from_tokens(tokens, return_dict=True)
    assert torch.equal(as_dict["cond"], cond)
    with_ids = clip.tokenize(text, return_word_ids=True)
    assert with_ids["l"][0][0] == (49406, 1.0, 0)
    assert torch.equal(clip.encode_from_tokens(with_ids), cond)
    skipped = clip.clone()
    skipped.clip_layer(-2)
    assert skipped.layer_idx == -2 and clip.layer_idx is None
    scheduled = clip.encode_from_tokens_scheduled(tokens, add_dict={"extra": 1})
    assert torch.equal(scheduled[0][0], cond) and scheduled[0][1]["extra"] == 1


def test_vae_surface_equals_the_vae_nodes(tiny) -> None:
    vae = tiny[2]
    assert vae.first_stage_model is vae.module and vae.downscale_ratio == vae.upscale_ratio == vae.downscale
    assert vae.spacial_compression_decode() == vae.downscale and vae.vae_dtype == torch.float32
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    (latent,) = V.vae_encode(pixels=img, vae=vae)
    assert torch.equal(vae.encode(img), latent["samples"])
    (decoded,) = V.vae_decode(samples=latent, vae=vae)
    assert torch.equal(vae.decode(latent["samples"]), decoded)
    big = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(5))
    tiled = vae.decode_tiled(big, tile_x=16, tile_y=16, overlap=4)
    assert torch.equal(tiled, vae.decode(big, tile_size=16 * vae.downscale, overlap=4 * vae.downscale))


def test_registered_apply_model_and_diffusion_model_wrappers_run_around_each_call(tiny) -> None:
    model, _, _, pos, neg = tiny
    seen: list[tuple[str, Any]] = []

    def outer_apply(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        seen.append(("apply_model", executor.class_obj))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def around_unet(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        seen.append(("diffusion_model", executor.class_obj))
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    wrapped = model.clone()
    wrapped.add_wrapper_with_key("apply_model", "pack", outer_apply)
    wrapped.add_wrapper_with_key("diffusion_model", "pack", around_unet)
    assert torch.equal(sample(wrapped, pos, neg), sample(model, pos, neg))
    assert [kind for kind, _ in seen] == ["apply_model", "diffusion_model"] * 2  # two steps
    assert seen[0][1] is wrapped.model and seen[1][1] is model.unet
    assert "wrappers" not in wrapped.model_options["transformer_options"]  # merged into a copy

    def halve_unet(executor, *args, **kwargs):
        return executor(*args, **kwargs) * 0.5

    halved = model.clone()
    halved.add_wrapper("diffusion_model", halve_unet)
    assert not torch.allclose(sample(halved, pos, neg), sample(model, pos, neg), atol=1e-4)


def test_clip_add_patches_takes_comfyui_keys(tiny) -> None:
    clip = tiny[1]
    own = "towers.clip_l.encoder.layers.0.self_attn.q_proj.weight"
    weight = clip.encoder.state_dict()[own]
    theirs, ours = clip.clone(), clip.clone()
    key = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert theirs.add_patches({key: (torch.full_like(weight, 0.02),)}) == [key]
    ours.add_patches({own: DiffPatch(torch.full_like(weight, 0.02))})
    text = "a red house"
    assert torch.equal(theirs.encode(text)[0], ours.encode(text)[0])
    assert not torch.equal(theirs.encode(text)[0], clip.encode(text)[0])


def test_patch_model_writes_the_clones_patches_and_unpatch_restores_them(tmp_path) -> None:
    # Its own model: it writes into the shared weights, which other tests of this module (in any order)
    # load and patch through the manager.
    path = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1", seed=1)
    model = load_checkpoint_handles(path, manager=ModelManager(DeviceInfo.cpu()))[0]
    key = "input_blocks.1.1.proj_in.weight"
    original = model.unet.state_dict()[key].clone()
    clone = model.clone()
    clone.add_patches({"diffusion_model." + key: (torch.full_like(original, 0.25),)})
    with clone.use_ejected():
        assert clone.patch_model() is clone.model
    assert torch.allclose(model.unet.state_dict()[key], original + 0.25)
    clone.unpatch_model()
    assert torch.equal(model.unet.state_dict()[key], original)
    by_hand = clone.calculate_weight(
        [(0.5, ("diff", (torch.ones_like(original),)), 2.0, None, None)], original, key
    )
    assert torch.allclose(by_hand, original * 2.0 + 0.5)
    clone.pre_run()
    clone.cleanup()
