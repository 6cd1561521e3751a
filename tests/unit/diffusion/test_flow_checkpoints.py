"""SD3/SD3.5 and FLUX.1 files: family and config from keys and shapes, every layout loads, fp8 scaled dequantizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.diffusion.checkpoints.detect import detect_checkpoint
from engine.diffusion.checkpoints.detect_flux import flux_config_from_state_dict
from engine.diffusion.checkpoints.detect_mmdit import mmdit_config_from_state_dict
from engine.diffusion.checkpoints.flow_detect import default_shift, detect_flow_file
from engine.diffusion.checkpoints.flow_loader import (
    dequantize_fp8,
    load_diffusion_model,
    load_flow_checkpoint,
)
from engine.diffusion.checkpoints.io import CheckpointError
from engine.diffusion.checkpoints.loader import load_vae
from engine.diffusion.models import flux, latent_formats, mmdit
from tests.factories.flow_checkpoints import flow_file_state_dict, write_flow_file, write_flux_ae

FULL_MMDIT = [
    (mmdit.SD3_MEDIUM, "sd3_medium"),
    (mmdit.SD35_LARGE, "sd3.5_large"),
    (mmdit.SD35_MEDIUM, "sd3.5_medium"),
]
FULL_FLUX = [(flux.FLUX_DEV, "flux_dev"), (flux.FLUX_SCHNELL, "flux_schnell")]


@pytest.mark.parametrize(("config", "variant"), FULL_MMDIT, ids=[v for _, v in FULL_MMDIT])
def test_full_size_mmdit_configs_are_read_from_shapes(config: mmdit.MMDiTConfig, variant: str) -> None:
    # Meta tensors: the real releases' shapes without their memory.
    sd = {"model.diffusion_model." + k: v for k, v in mmdit.MMDiT(config, device="meta").state_dict().items()}
    assert mmdit_config_from_state_dict(mmdit.MMDiT(config, device="meta").state_dict()) == config
    spec = detect_flow_file(sd, filename="x.safetensors")
    assert (spec.family, spec.variant, spec.transformer_config) == ("sd3", variant, config)
    assert spec.latent_format == latent_formats.SD3 and default_shift(spec) == 3.0


@pytest.mark.parametrize(("config", "variant"), FULL_FLUX, ids=[v for _, v in FULL_FLUX])
def test_full_size_flux_configs_are_read_from_shapes(config: flux.FluxConfig, variant: str) -> None:
    sd = flux.Flux(config, device="meta").state_dict()
    assert flux_config_from_state_dict(sd) == config
    spec = detect_flow_file(sd, filename="flux1.safetensors")
    assert (spec.family, spec.variant, spec.layout, spec.transformer_prefix) == (
        "flux",
        variant,
        "diffusion_model",
        "",
    )
    assert default_shift(spec) == (1.15 if config.guidance_embed else 1.0)


@pytest.mark.parametrize(
    ("family", "config"),
    [("sd3", mmdit.TINY), ("sd3", mmdit.TINY_X), ("flux", flux.TINY), ("flux", flux.TINY_SCHNELL)],
    ids=["mmdit", "mmdit_x", "flux_dev", "flux_schnell"],
)
def test_tiny_configs_round_trip(family: str, config: object) -> None:
    spec = detect_flow_file(flow_file_state_dict(family, config=config, layout="diffusion_model"))
    assert spec.transformer_config == config


def test_sd3_all_in_one_loads_every_component(tmp_path: Path) -> None:
    path = tmp_path / "sd3.5_tiny.safetensors"
    written = write_flow_file(path, "sd3", config=mmdit.TINY_X)
    loaded = load_flow_checkpoint(path)
    spec = loaded.spec
    assert (spec.family, spec.variant, spec.layout, spec.vae_prefix) == (
        "sd3",
        "sd3.5_medium",
        "all_in_one",
        "first_stage_model.",
    )
    assert spec.text_encoders == ("clip_l", "clip_g", "t5xxl") and not spec.scaled_fp8
    assert spec.components == {"unet", "vae", "text"}
    assert isinstance(loaded.transformer, mmdit.MMDiT)
    for k, v in loaded.transformer.state_dict().items():
        assert torch.equal(v, written["model.diffusion_model." + k]), k
    cfg = loaded.vae.config
    assert (cfg.scaling_factor, cfg.shift_factor, cfg.use_quant_conv) == (1.5305, 0.0609, False)
    t5 = loaded.text_state_dicts["t5xxl"]
    assert torch.equal(t5["shared.weight"], written["text_encoders.t5xxl.transformer.shared.weight"])
    assert "text_model.final_layer_norm.weight" in loaded.text_state_dicts["clip_g"]


def test_flux_all_in_one_uses_the_vae_prefix_comfyui_saves(tmp_path: Path) -> None:
    path = tmp_path / "flux1-dev-tiny.safetensors"
    write_flow_file(path, "flux")
    loaded = load_flow_checkpoint(path)
    assert (loaded.spec.variant, loaded.spec.vae_prefix, loaded.spec.text_encoders) == (
        "flux_dev",
        "vae.",
        ("clip_l", "t5xxl"),
    )
    assert (loaded.vae.config.scaling_factor, loaded.vae.config.shift_factor) == (0.3611, 0.1159)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_diffusion_model_only_file_loads_and_computes_like_the_source(tmp_path: Path, family: str) -> None:
    path = tmp_path / f"{family}.safetensors"
    written = write_flow_file(path, family, layout="diffusion_model")
    spec, model = load_diffusion_model(path)
    assert spec.layout == "diffusion_model" and spec.vae_config is None and spec.text_encoders == ()
    source = (mmdit.MMDiT if family == "sd3" else flux.Flux)(spec.transformer_config)
    source.load_state_dict(written)
    g = torch.Generator().manual_seed(0)
    cfg = spec.transformer_config
    x = torch.randn(1, 16, 8, 8, generator=g)
    ctx = torch.randn(1, 5, cfg.context_in_dim, generator=g)
    if family == "sd3":
        y = torch.randn(1, cfg.adm_in_channels, generator=g)
        args: tuple = (x, torch.tensor([500.0]), ctx, y)
    else:
        args = (x, torch.tensor([0.5]), ctx, torch.randn(1, cfg.vec_in_dim, generator=g), torch.tensor([3.5]))
    with torch.no_grad():
        assert torch.equal(model(*args), source(*args))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_fp8_scaled_weights_are_dequantized_at_load(tmp_path: Path, family: str) -> None:
    path = tmp_path / f"{family}_fp8_scaled.safetensors"
    written = write_flow_file(path, family, fp8_scaled=True)
    reference = flow_file_state_dict(family)  # the same seeds, unquantized
    loaded = load_flow_checkpoint(path, dtype=torch.float32)
    assert loaded.spec.scaled_fp8
    pre = "model.diffusion_model."
    name = (
        "joint_blocks.0.x_block.attn.qkv.weight" if family == "sd3" else "double_blocks.0.img_attn.qkv.weight"
    )
    got = loaded.transformer.state_dict()[name]
    stored = written[pre + name]
    assert stored.dtype == torch.float8_e4m3fn
    # Exactly stored * scale, and within e4m3fn's rounding (3 mantissa bits) of the original weight.
    assert torch.equal(got, stored.float() * written[pre + name[: -len("weight")] + "scale_weight"])
    original = reference[pre + name]
    assert ((got - original).abs() <= original.abs() * 2**-4 + 1e-6).all()
    assert not torch.equal(got, original)
    # T5 in the same file is scaled too and comes back dequantized, without scale keys.
    t5 = loaded.text_state_dicts["t5xxl"]
    assert all(v.dtype == torch.float32 for v in t5.values())
    assert not any(k.endswith(("scale_weight", "scaled_fp8")) for k in t5)


def test_fp8_without_a_dtype_becomes_bfloat16_and_dtypes_apply_per_component(tmp_path: Path) -> None:
    path = tmp_path / "sd3_fp8_scaled.safetensors"
    write_flow_file(path, "sd3", fp8_scaled=True)
    assert load_flow_checkpoint(path, components=("unet",)).transformer.dtype == torch.bfloat16
    plain = tmp_path / "sd3.safetensors"
    write_flow_file(plain, "sd3")
    loaded = load_flow_checkpoint(
        plain, dtypes={"unet": torch.float16, "vae": torch.float32, "text": torch.bfloat16}
    )
    assert loaded.transformer.dtype == torch.float16 and loaded.vae.dtype == torch.float32
    assert {v.dtype for v in loaded.text_state_dicts["clip_l"].values()} == {torch.bfloat16}


def test_components_filter_skips_reading_but_spec_still_lists_text_encoders(tmp_path: Path) -> None:
    path = tmp_path / "sd3.safetensors"
    write_flow_file(path, "sd3")
    loaded = load_flow_checkpoint(path, components=("unet",))
    assert loaded.vae is None and loaded.text_state_dicts == {}
    assert loaded.spec.text_encoders == ("clip_l", "clip_g", "t5xxl")


def test_dequantize_keeps_plain_tensors_and_drops_markers() -> None:
    sd = {
        "a.weight": torch.tensor([[2.0, -4.0]]).to(torch.float8_e4m3fn),
        "a.scale_weight": torch.tensor(0.5),
        "a.bias": torch.tensor([1.0, 2.0]),
        "b.weight": torch.tensor([[1.5]]).to(torch.float8_e5m2),  # plain fp8: scale 1
        "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
    }
    out = dequantize_fp8(sd, lambda k: torch.float32)
    assert set(out) == {"a.weight", "a.bias", "b.weight"}
    assert out["a.weight"].tolist() == [[1.0, -2.0]] and out["b.weight"].tolist() == [[1.5]]


def test_flux_ae_file_loads_with_flux_factors(tmp_path: Path) -> None:
    path = tmp_path / "ae.safetensors"
    write_flux_ae(path)
    vae = load_vae(path)
    assert (vae.config.scaling_factor, vae.config.shift_factor, vae.config.use_quant_conv) == (
        0.3611,
        0.1159,
        False,
    )
    # The same weights under another name are taken for SD3's VAE (the architectures are the same).
    other = tmp_path / "sd3_vae.safetensors"
    path.rename(other)
    assert load_vae(other).config.shift_factor == 0.0609


def test_sd_checkpoint_detection_points_flow_files_to_their_loader() -> None:
    for family in ("sd3", "flux"):
        for layout in ("all_in_one", "diffusion_model"):
            sd = flow_file_state_dict(family, layout=layout, with_text=False)
            with pytest.raises(CheckpointError, match="SD3/SD3.5 or FLUX.1"):
                detect_checkpoint(sd, filename="m.safetensors")


def test_non_flow_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not an SD3/SD3.5 or FLUX.1 model"):
        detect_flow_file({"foo.weight": torch.zeros(1)}, filename="foo.safetensors")


def test_fp8_dtype_request_keeps_unscaled_storage_but_not_scaled_weights() -> None:
    sd = {
        "a.weight": torch.tensor([[2.0]]).to(torch.float8_e4m3fn),
        "a.scale_weight": torch.tensor(0.5),
        "b.weight": torch.tensor([[1.5]]),
    }
    out = dequantize_fp8(sd, lambda k: torch.float8_e4m3fn)
    assert out["a.weight"].dtype == torch.bfloat16 and out["a.weight"].item() == 1.0
    assert out["b.weight"].dtype == torch.float8_e4m3fn and out["b.weight"].float().item() == 1.5


def test_scaled_fp8_file_asked_for_in_fp8_is_built_in_bfloat16(tmp_path: Path) -> None:
    path = tmp_path / "flux_fp8_scaled.safetensors"
    write_flow_file(path, "flux", layout="diffusion_model", fp8_scaled=True)
    _, model = load_diffusion_model(path, dtype=torch.float8_e4m3fn)
    assert model.dtype == torch.bfloat16


def test_prefixed_transformer_without_other_parts_is_a_diffusion_model_file(tmp_path: Path) -> None:
    # SAI's sd3.5 files keep 'model.diffusion_model.'; with no VAE and no text encoders they load as UNETLoader's.
    path = tmp_path / "sd3.5_medium.safetensors"
    write_flow_file(path, "sd3", config=mmdit.TINY_X, with_vae=False, with_text=False)
    spec, model = load_diffusion_model(path)
    assert (spec.layout, spec.transformer_prefix, spec.variant) == (
        "diffusion_model",
        "model.diffusion_model.",
        "sd3.5_medium",
    )
    assert isinstance(model, mmdit.MMDiT) and len(model.joint_blocks) == mmdit.TINY_X.depth
    assert any("no VAE weights" in n for n in spec.notes)
