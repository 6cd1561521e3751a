"""Family detection from keys and shapes, prediction type evidence, and errors for non-checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints.detect import ModelFamily, detect_checkpoint
from engine.diffusion.checkpoints.io import CheckpointError
from engine.diffusion.checkpoints.loader import load_checkpoint
from tests.factories.checkpoints import tiny_single_file_state_dict, write_tiny_checkpoint

F = ModelFamily


@pytest.fixture(scope="module")
def tiny_sds() -> dict[ModelFamily, dict[str, torch.Tensor]]:
    return {f: tiny_single_file_state_dict(f, seed=0) for f in F}


@pytest.mark.parametrize(
    ("family", "kinds", "context", "adm", "pred"),
    [
        (F.SD1, ["clip_l"], 32, None, "eps"),
        (F.SD2, ["clip_h"], 32, None, "eps"),
        (F.SD2_V, ["clip_h"], 32, None, "v"),
        (F.SDXL, ["clip_l", "clip_g"], 64, 32 + 6 * 256, "eps"),
        (F.SDXL_REFINER, ["clip_g"], 32, 32 + 5 * 256, "eps"),
    ],
)
def test_ckpt_detect_each_family(tiny_sds, family, kinds, context, adm, pred) -> None:  # type: ignore[no-untyped-def]
    spec = detect_checkpoint(tiny_sds[family], filename="x.safetensors")
    assert spec.family is family
    assert [e.kind for e in spec.text_encoders] == kinds
    assert spec.prediction_type == pred
    assert spec.unet_config.context_dim == context
    assert spec.unet_config.adm_in_channels == adm
    assert spec.components == {"unet", "vae", "text"}
    assert not spec.is_inpaint
    assert spec.vae_config.scaling_factor == (0.13025 if family.is_sdxl else 0.18215)
    # The attention layout comes from the family: SD1 uses 8 heads, the others 64-channel heads.
    if family is F.SD1:
        assert spec.unet_config.num_heads == 8
    else:
        assert spec.unet_config.num_head_channels == 64
    if family in (F.SD2, F.SD2_V):
        assert spec.prediction_source == "weight statistic"


def test_ckpt_detect_inpaint_variants() -> None:
    for family in (F.SD1, F.SDXL):
        spec = detect_checkpoint(
            tiny_single_file_state_dict(family, inpaint=True), filename="inp.safetensors"
        )
        assert spec.family is family and spec.is_inpaint and spec.unet_config.in_channels == 9
    # SD2 inpainting was only released as eps: the weight statistic is not consulted.
    spec = detect_checkpoint(tiny_single_file_state_dict(F.SD2_V, inpaint=True), filename="inp.safetensors")
    assert spec.family is F.SD2 and spec.prediction_type == "eps" and spec.is_inpaint


def test_ckpt_prediction_type_evidence_order(tiny_sds) -> None:  # type: ignore[no-untyped-def]
    sd2v = tiny_sds[F.SD2_V]
    # explicit override beats everything
    spec = detect_checkpoint(sd2v, prediction_type="eps", metadata={"modelspec.prediction_type": "v"})
    assert (spec.family, spec.prediction_type, spec.prediction_source) == (F.SD2, "eps", "override")
    # metadata beats the weight statistic
    spec = detect_checkpoint(sd2v, metadata={"modelspec.prediction_type": "epsilon"})
    assert (spec.family, spec.prediction_source) == (F.SD2, "metadata")
    spec = detect_checkpoint(tiny_sds[F.SD2], metadata={"ss_v_parameterization": "True"})
    assert spec.family is F.SD2_V
    # a v_pred marker key makes SDXL v-prediction, with a note
    spec = detect_checkpoint({**tiny_sds[F.SDXL], "v_pred": torch.tensor([])})
    assert (spec.family, spec.prediction_type, spec.prediction_source) == (F.SDXL, "v", "v_pred key")
    assert any("v-prediction" in n for n in spec.notes)
    with pytest.raises(ValueError, match="prediction_type must be 'eps' or 'v'"):
        detect_checkpoint(sd2v, prediction_type="x0")


def test_ckpt_detect_sgm_format_sd2_and_turbo_note(tiny_sds) -> None:  # type: ignore[no-untyped-def]
    # SD2.1 architecture saved by Stability's sgm code (as SD-Turbo is): OpenCLIP-H as embedder 0.
    sd = {
        (k.replace("cond_stage_model.model.", "conditioner.embedders.0.model.")): v
        for k, v in tiny_sds[F.SD2].items()
    }
    spec = detect_checkpoint(sd, filename="sd_turbo.safetensors")
    assert spec.family is F.SD2
    assert (
        spec.text_encoders[0].kind == "clip_h"
        and spec.text_encoders[0].prefix == "conditioner.embedders.0.model."
    )
    assert any("SD-Turbo" in n for n in spec.notes)


def test_ckpt_detect_legacy_sd1_text_keys(tmp_path: Path, tiny_sds) -> None:  # type: ignore[no-untyped-def]
    sd = {
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
        for k, v in tiny_sds[F.SD1].items()
    }
    path = tmp_path / "old.safetensors"
    save_file(sd, str(path))
    ck = load_checkpoint(path, components=("unet", "text"))
    assert ck.spec.family is F.SD1 and ck.text_encoder is not None and ck.vae is None


def test_ckpt_lora_passed_as_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "style_lora.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        str(path),
    )
    with pytest.raises(
        CheckpointError, match=r"style_lora\.safetensors: this is a LoRA .* models/loras .* LoraLoader"
    ):
        load_checkpoint(path)


def test_ckpt_vae_file_passed_as_checkpoint(tmp_path: Path, tiny_sds) -> None:  # type: ignore[no-untyped-def]
    vae = {k: v for k, v in tiny_sds[F.SD1].items() if k.startswith("first_stage_model.")}
    path = tmp_path / "vae-ft-mse.safetensors"
    save_file(vae, str(path))
    with pytest.raises(CheckpointError, match=r"this is a VAE file .* models/vae .* VAELoader"):
        load_checkpoint(path)


def test_ckpt_missing_vae_is_not_fatal(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "novae.safetensors", F.SD1, with_vae=False)
    ck = load_checkpoint(path)
    assert ck.vae is None and ck.unet is not None and ck.text_encoder is not None
    assert "vae" not in ck.spec.components
    assert any("novae.safetensors contains no VAE weights" in n and "VAELoader" in n for n in ck.spec.notes)
    with pytest.raises(CheckpointError, match=r"novae\.safetensors: this checkpoint has no VAE .* VAELoader"):
        ck.require_vae()


def test_ckpt_unknown_file_lists_what_was_looked_at(tmp_path: Path) -> None:
    path = tmp_path / "mystery.safetensors"
    save_file({"backbone.layer1.weight": torch.zeros(2, 2), "head.fc.bias": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "mystery.safetensors" in msg and "not a Stable Diffusion checkpoint" in msg
    assert "model.diffusion_model.*" in msg and "conditioner.embedders.*" in msg
    assert "backbone.layer1.* (1)" in msg and "head.fc.* (1)" in msg


def test_ckpt_inconsistent_text_and_unet(tiny_sds) -> None:  # type: ignore[no-untyped-def]
    # SDXL UNet (context 64) with only an SD1 text encoder (32 wide).
    sd = {k: v for k, v in tiny_sds[F.SDXL].items() if not k.startswith("conditioner.")}
    sd.update({k: v for k, v in tiny_sds[F.SD1].items() if k.startswith("cond_stage_model.")})
    with pytest.raises(CheckpointError, match=r"inconsistent checkpoint.*sd1.*cross-attention.*expects 64"):
        detect_checkpoint(sd, filename="frankenstein.safetensors")


def test_ckpt_unet_only_without_text_needs_real_context(tiny_sds) -> None:  # type: ignore[no-untyped-def]
    sd = {k: v for k, v in tiny_sds[F.SD1].items() if k.startswith("model.diffusion_model.")}
    with pytest.raises(CheckpointError, match=r"cannot tell the model family: .*cross-attention width 32"):
        detect_checkpoint(sd, filename="u.safetensors")
