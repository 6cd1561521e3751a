"""SD3 / SD3.5 and FLUX.1 nodes on tiny files in the real layouts: loaders (checkpoint, split text encoders,
diffusion models, fp8), per-encoder prompts with ComfyUI's padding rules, Flux guidance, model-sampling
shifts, skip-layer guidance."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.diffusion.models import flux, mmdit
from engine.diffusion.sampling.guidance import CFGDenoiser
from engine.diffusion.sampling.model_sampling import ModelSamplingFlow, ModelSamplingFlux
from engine.diffusion.text.t5_tokenizer import T5TokenizerFilesError
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.flow_checkpoints import write_flow_file, write_flux_ae, write_text_encoder_files
from tests.unit.diffusion.t5_fixtures import train_spiece
from tests.unit.nodes.node_support import builtin, node_context

C, L, F = (builtin(name) for name in ("conditioning", "loaders", "flow"))
PROMPT = "a photo of a cat"


def _write_models(models: Path) -> None:
    write_flow_file(models / "checkpoints" / "sd3.5_tiny.safetensors", "sd3", config=mmdit.TINY_X)
    write_flow_file(models / "checkpoints" / "flux1-dev-aio.safetensors", "flux", config=flux.TINY)
    dm = models / "diffusion_models"
    write_flow_file(dm / "flux1-dev.safetensors", "flux", config=flux.TINY, layout="diffusion_model")
    write_flow_file(
        dm / "flux1-schnell.safetensors", "flux", config=flux.TINY_SCHNELL, layout="diffusion_model"
    )
    write_text_encoder_files(models / "text_encoders", "flux")
    write_text_encoder_files(models / "text_encoders" / "sd3", "sd3")
    (models / "vae").mkdir(parents=True, exist_ok=True)
    write_flux_ae(models / "vae" / "ae.safetensors")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Tiny model files (read-only for the tests) and a node context over them."""
    root = tmp_path_factory.mktemp("flow_nodes")
    _write_models(root / "models")
    train_spiece(root / "models" / "text_encoders" / "t5_tokenizer" / "spiece.model")
    folders = Folders.create(root)
    ctx = node_context(folders=folders, manager=ModelManager(select_device(MemoryOptions())))[0]
    return ctx


def _cond(conditioning: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    (entry,) = conditioning
    return entry[0], entry[1]


def test_sd3_checkpoint_gives_flow_handles_the_sd_nodes_use(env: Any) -> None:
    model, clip, vae = L.checkpoint_loader_simple(ckpt_name="sd3.5_tiny.safetensors", context=env)
    assert (model.family, model.latent_channels, clip.family, vae.latent_channels) == ("sd3", 16, "sd3", 16)
    ms = model.model_sampling
    assert isinstance(ms, ModelSamplingFlow) and (ms.shift, ms.multiplier) == (3.0, 1000.0)
    cond, opts = _cond(C.clip_text_encode(text=PROMPT, clip=clip)[0])
    # [CLIP-L | CLIP-G] penultimate features padded to T5's width (40), then T5's 77 rows.
    assert cond.shape == (1, 77 + 77, 40) and opts["pooled_output"].shape == (1, 8 + 16)
    assert torch.equal(cond[:, :77, 24:], torch.zeros(1, 77, 16))
    same, same_opts = _cond(F.clip_text_encode_sd3(clip, PROMPT, PROMPT, PROMPT, "none")[0])
    assert torch.equal(same, cond) and torch.equal(same_opts["pooled_output"], opts["pooled_output"])
    preview = model.preview_image(torch.randn(1, 16, 8, 8))
    assert preview.size == (8, 8)


def test_flux_all_in_one_checkpoint_samples_and_decodes_with_the_sd_nodes(env: Any) -> None:
    model, clip, vae = L.checkpoint_loader_simple(ckpt_name="flux1-dev-aio.safetensors", context=env)
    assert (model.family, clip.family, vae.latent_channels) == ("flux", "flux", 16)
    assert isinstance(model.model_sampling, ModelSamplingFlux)
    positive = C.clip_text_encode(text=PROMPT, clip=clip)[0]
    cond, opts = _cond(positive)
    assert cond.shape == (1, 256, 40) and opts["pooled_output"].shape == (1, 24)
    (guided,) = F.flux_guidance(positive, 2.0)
    latent = _sample(env, model, guided)
    (image,) = builtin("vae_nodes").vae_decode(samples={"samples": latent}, vae=vae)
    assert latent.shape == (1, 16, 8, 8) and image.shape == (1, 16, 16, 3) and torch.isfinite(image).all()
    assert not torch.equal(latent, _sample(env, model, positive))  # guidance 2.0 vs the default 3.5


def test_clip_text_encode_sd3_empty_prompts_follow_comfyui(env: Any) -> None:
    _, clip, _ = L.checkpoint_loader_simple(ckpt_name="sd3.5_tiny.safetensors", context=env)
    full, _ = _cond(C.clip_text_encode(text=PROMPT, clip=clip)[0])
    empty, empty_opts = _cond(C.clip_text_encode(text="", clip=clip)[0])
    # Both CLIP prompts empty, no padding: no CLIP part at all and a zero pooled vector.
    t5_only, opts = _cond(F.clip_text_encode_sd3(clip, "", "", PROMPT, "none")[0])
    assert torch.equal(t5_only, full[:, 77:]) and not opts["pooled_output"].any()
    # One CLIP prompt empty: padded with the empty prompt's chunk even without padding (ComfyUI pads the
    # shorter token list), so CLIP-L's features and pooled vector are those of "".
    mixed, mixed_opts = _cond(F.clip_text_encode_sd3(clip, "", PROMPT, PROMPT, "none")[0])
    assert torch.equal(mixed[:, :77, :8], empty[:, :77, :8])
    assert torch.equal(mixed[:, :77, 8:], full[:, :77, 8:])
    assert torch.equal(mixed_opts["pooled_output"][:, :8], empty_opts["pooled_output"][:, :8])
    # T5 prompt empty: the lone </s> token without padding; with empty_prompt padding, 77 rows of "".
    no_t5, _ = _cond(F.clip_text_encode_sd3(clip, PROMPT, PROMPT, "", "none")[0])
    padded, _ = _cond(F.clip_text_encode_sd3(clip, PROMPT, PROMPT, "", "empty_prompt")[0])
    assert no_t5.shape[1] == 77 + 1 and padded.shape[1] == 77 + 77
    assert torch.equal(padded[:, 77:], empty[:, 77:]) and torch.equal(no_t5[:, :77], full[:, :77])


def test_triple_clip_loader_reads_kinds_from_weights_in_any_order(env: Any) -> None:
    _, clip, _ = L.checkpoint_loader_simple(ckpt_name="sd3.5_tiny.safetensors", context=env)
    names = ["sd3/t5xxl_fp16.safetensors", "sd3/clip_g.safetensors", "sd3/clip_l.safetensors"]
    (triple,) = L.triple_clip_loader(*names, context=env)
    # The separate files hold the same weights as the checkpoint's text encoders.
    ours, opts = _cond(C.clip_text_encode(text=PROMPT, clip=triple)[0])
    ref, ref_opts = _cond(C.clip_text_encode(text=PROMPT, clip=clip)[0])
    assert torch.equal(ours, ref) and torch.equal(opts["pooled_output"], ref_opts["pooled_output"])


def test_flux_dual_clip_loader_and_clip_text_encode_flux(env: Any) -> None:
    (a,) = L.dual_clip_loader("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", context=env)
    (b,) = L.dual_clip_loader("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux", context=env)
    cond_a, opts_a = _cond(C.clip_text_encode(text=PROMPT, clip=a)[0])
    cond_b, _ = _cond(C.clip_text_encode(text=PROMPT, clip=b)[0])
    assert a.family == "flux" and cond_a.shape == (1, 256, 40) and opts_a["pooled_output"].shape == (1, 24)
    assert torch.equal(cond_a, cond_b)
    split, split_opts = _cond(F.clip_text_encode_flux(a, "a red dog", PROMPT, 2.5)[0])
    assert split_opts["guidance"] == 2.5
    assert torch.equal(split, cond_a)  # the context is T5's prompt
    assert not torch.equal(split_opts["pooled_output"], opts_a["pooled_output"])  # pooled is CLIP-L's
    with pytest.raises(ValueError, match="CLIPTextEncodeSD3 needs SD3"):
        F.clip_text_encode_sd3(a, PROMPT, PROMPT, PROMPT, "none")


def test_unsupported_clip_types_are_refused_by_name(env: Any) -> None:
    with pytest.raises(ValueError, match="'mochi' is not supported"):
        L.clip_loader("clip_l.safetensors", "mochi", context=env)
    with pytest.raises(ValueError, match="'hunyuan_video' is not supported"):
        L.dual_clip_loader("clip_l.safetensors", "t5xxl_fp16.safetensors", "hunyuan_video", context=env)
    with pytest.raises(Exception, match="CLIP-L and T5-XXL"):
        L.dual_clip_loader("sd3/clip_g.safetensors", "sd3/clip_l.safetensors", "flux", context=env)


def test_flux_guidance_nodes_set_and_disable_without_touching_the_input() -> None:
    conditioning = [[torch.zeros(1, 4, 8), {"pooled_output": torch.zeros(1, 8)}]]
    (guided,) = F.flux_guidance(conditioning, 4.0)
    (off,) = F.flux_disable_guidance(guided)
    assert guided[0][1]["guidance"] == 4.0 and off[0][1]["guidance"] is None
    assert "guidance" not in conditioning[0][1] and guided[0][1]["guidance"] == 4.0
    (latent,) = F.empty_sd3_latent_image(64, 48, 2)
    assert latent["samples"].shape == (2, 16, 6, 8) and not latent["samples"].any()


def test_model_sampling_nodes_set_comfyui_shifts_on_a_clone(env: Any) -> None:
    (model,) = L.unet_loader("flux1-dev.safetensors", "default", context=env)
    assert isinstance(model.model_sampling, ModelSamplingFlux) and model.model_sampling.shift == 1.15
    (sd3,) = F.model_sampling_sd3(model, 2.0)
    t = torch.tensor(0.4)
    assert math.isclose(float(sd3.model_sampling.sigma(t * 1000)), 2 * 0.4 / (1 + 0.4), rel_tol=1e-6)
    assert float(sd3.model_sampling.timestep(torch.tensor(0.5))) == 500.0
    (aura,) = F.model_sampling_auraflow(model, 1.73)
    assert float(aura.model_sampling.timestep(torch.tensor(0.5))) == 0.5
    (fx,) = F.model_sampling_flux(model, 1.15, 0.5, 512, 512)
    # 1024 image tokens: mu = 0.5 + (1.15 - 0.5) * (1024 - 256) / (4096 - 256)
    assert math.isclose(fx.model_sampling.shift, 0.5 + 0.65 * 768 / 3840, rel_tol=1e-9)
    assert model.model_sampling.shift == 1.15  # the input model is unchanged


def _sample(ctx: Any, model: Any, positive: Any, seed: int = 3) -> torch.Tensor:
    sampling = builtin("sampling")
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    out = sampling.ksampler(model, seed, 2, 1.0, "euler", "simple", positive, positive, latent, context=ctx)
    return out[0]["samples"]


def test_unet_loader_fp8_stores_fp8_and_samples_close_to_default(env: Any) -> None:
    (plain,) = L.unet_loader("flux1-schnell.safetensors", "default", context=env)
    (fp8,) = L.unet_loader("flux1-schnell.safetensors", "fp8_e4m3fn", context=env)
    assert fp8.transformer.img_in.weight.dtype == torch.float8_e4m3fn
    assert plain.transformer.img_in.weight.dtype == torch.float32
    positive = [[torch.randn(1, 7, 40, generator=torch.Generator().manual_seed(0)), {}]]
    a, b = _sample(env, plain, positive), _sample(env, fp8, positive)
    assert torch.isfinite(b).all() and not torch.equal(a, b)
    assert (a - b).abs().mean() < 0.1 * a.abs().mean()


def test_missing_t5_vocabulary_loads_and_names_the_file_on_encode(env: Any, tmp_path: Path) -> None:
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    src = env.folders.full_path("checkpoints", "sd3.5_tiny.safetensors")
    shutil.copy(src, models / "sd3.5_tiny.safetensors")
    ctx = node_context(folders=Folders.create(tmp_path), manager=env.models)[0]
    model, clip, vae = L.checkpoint_loader_simple(ckpt_name="sd3.5_tiny.safetensors", context=ctx)
    assert model is not None and vae is not None
    with pytest.raises(T5TokenizerFilesError, match=r"spiece\.model.*t5_tokenizer"):
        C.clip_text_encode(text=PROMPT, clip=clip)


def _denoise(model: Any, positive: Any, x: torch.Tensor, sigma: float, options: Any = None) -> torch.Tensor:
    opts = model.sampling_options() if options is None else options
    with model.use():
        guider = CFGDenoiser(model.diffusion_model(), positive, None, 1.0, like=x, model_options=opts)
        return guider(x, torch.tensor([sigma]))


def test_skip_layer_guidance_moves_away_from_the_skipped_pass(env: Any) -> None:
    (model,) = L.unet_loader("flux1-dev.safetensors", "default", context=env)
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 7, 40, generator=g), {"pooled_output": torch.randn(1, 24, generator=g)}]]
    x = torch.randn(1, 16, 8, 8, generator=g)
    (slg,) = F.skip_layer_guidance_dit(model, "0", "1", 2.0, 0.0, 1.0, 0.0)
    skip = {("double_block", 0): lambda args, _: args, ("single_block", 1): lambda args, _: args}
    skipped = _denoise(model, positive, x, 0.5, {"transformer_options": {"patches_replace": {"dit": skip}}})
    plain = _denoise(model, positive, x, 0.5)
    guided = _denoise(slg, positive, x, 0.5)
    assert not torch.allclose(skipped, plain, atol=1e-4)
    torch.testing.assert_close(guided, plain + (plain - skipped) * 2.0, atol=1e-5, rtol=1e-5)
    # Outside [end_percent, start_percent] of the schedule the model is left alone.
    (late,) = F.skip_layer_guidance_dit(model, "0", "1", 2.0, 0.9, 0.95, 0.0)
    assert torch.equal(_denoise(late, positive, x, 0.5), plain)
    # A replacement that runs the original block changes nothing.
    through = {("double_block", 0): lambda args, extra: extra["original_block"](args)}
    again = _denoise(model, positive, x, 0.5, {"transformer_options": {"patches_replace": {"dit": through}}})
    assert torch.equal(again, plain)
    (same,) = F.skip_layer_guidance_sd3(model, "", 3.0, 0.01, 0.15)
    assert same is model  # no layers listed: nothing to do


def test_skip_layer_guidance_sd3_skips_joint_blocks(env: Any) -> None:
    model, clip, _ = L.checkpoint_loader_simple(ckpt_name="sd3.5_tiny.safetensors", context=env)
    positive = C.clip_text_encode(text=PROMPT, clip=clip)[0]
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = _denoise(model, positive, x, 0.5)
    (slg,) = F.skip_layer_guidance_sd3(model, "1", 1.5, 0.0, 1.0)
    skip = {("double_block", 1): lambda args, _: args}
    skipped = _denoise(model, positive, x, 0.5, {"transformer_options": {"patches_replace": {"dit": skip}}})
    torch.testing.assert_close(_denoise(slg, positive, x, 0.5), plain + (plain - skipped) * 1.5)
    assert not torch.allclose(skipped, plain, atol=1e-4)


def test_fp8_scaled_t5_file_is_dequantized_to_nearly_the_same_encoder(env: Any, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "text_encoders"
    files = write_text_encoder_files(folder, "flux", t5_fp8_scaled=True)
    shutil.copytree(
        env.folders.full_path("text_encoders", "t5_tokenizer/spiece.model").parent, folder / "t5_tokenizer"
    )
    ctx = node_context(folders=Folders.create(tmp_path), manager=env.models)[0]
    (fp8,) = L.dual_clip_loader(files["t5xxl"].name, "clip_l.safetensors", "flux", context=ctx)
    (ref,) = L.dual_clip_loader("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux", context=env)
    a, _ = _cond(C.clip_text_encode(text=PROMPT, clip=fp8)[0])
    b, _ = _cond(C.clip_text_encode(text=PROMPT, clip=ref)[0])
    assert fp8.encoder.t5xxl.t5xxl.shared.weight.dtype == torch.float32
    assert not torch.equal(a, b) and (a - b).abs().mean() < 0.1 * b.abs().mean()


def test_controlnet_apply_sd3_with_zero_strength_passes_conditioning_through() -> None:
    positive = [[torch.zeros(1, 4, 8), {}]]
    negative = [[torch.ones(1, 4, 8), {}]]
    out = F.controlnet_apply_sd3(positive, negative, None, None, torch.zeros(1, 8, 8, 3), 0.0, 0.0, 1.0)
    assert out[0] is positive and out[1] is negative


def test_fp8_weight_dtype_on_an_sd_unet_is_refused_by_name(env: Any, tmp_path: Path) -> None:
    from tests.factories.checkpoints import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path / "models" / "diffusion_models" / "sd1.safetensors", "sd1", seed=1)
    ctx = node_context(folders=Folders.create(tmp_path), manager=env.models)[0]
    with pytest.raises(ValueError, match="weight_dtype 'fp8_e5m2' is supported for SD3"):
        L.unet_loader("sd1.safetensors", "fp8_e5m2", context=ctx)


def test_flux_kontext_image_scale_picks_the_closest_training_size() -> None:
    flow = builtin("flow")
    image = torch.rand(1, 50, 100, 3)  # aspect 2.0: 1456x720 (2.02) is closest
    (out,) = flow.flux_kontext_image_scale(image)
    assert out.shape == (1, 720, 1456, 3)
    (square,) = flow.flux_kontext_image_scale(torch.rand(2, 30, 31, 3))
    assert square.shape == (2, 1024, 1024, 3)


def test_flux_kontext_multi_reference_method_is_stored_as_comfyui_does() -> None:
    flow = builtin("flow")
    cond = [[torch.zeros(1, 2, 4), {"guidance": 2.0}]]
    (out,) = flow.flux_kontext_multi_reference_latent_method(cond, "uxo/uno")
    assert out[0][1] == {"guidance": 2.0, "reference_latents_method": "uxo"}
    (out,) = flow.flux_kontext_multi_reference_latent_method(cond, "index")
    assert out[0][1]["reference_latents_method"] == "index"
    assert "reference_latents_method" not in cond[0][1]
