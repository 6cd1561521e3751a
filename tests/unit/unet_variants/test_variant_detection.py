"""Detection of the UNet variants from tiny files in the real key layout: the variant, the family, the
prediction type, the UNet config (x4: class embedding, 8 heads, attn1 on the text) and the VAE scale."""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.checkpoints import diffusers_layout as dl
from engine.diffusion.checkpoints.detect import detect_checkpoint
from engine.diffusion.checkpoints.io import CheckpointError
from engine.diffusion.checkpoints.loader import load_checkpoint
from engine.diffusion.checkpoints.spec import UNET_PREFIX, ModelFamily
from engine.diffusion.models.unet import UNetModel
from tests.factories.checkpoints import tiny_single_file_state_dict
from tests.factories.unet_variants import (
    variant_parts,
    variant_state_dict,
    write_variant_checkpoint,
    x4_unet_config,
)

pytestmark = pytest.mark.slow  # random tiny checkpoints of three variants: a few seconds in all


@pytest.fixture(scope="module")
def files() -> dict[str, dict[str, torch.Tensor]]:
    """The variants' state dicts, built once for the module (tests only read them)."""
    return {v: variant_state_dict(v) for v in ("ip2p", "depth", "x4_upscaler")}


@pytest.mark.parametrize(
    ("variant", "family", "prediction", "in_channels"),
    [
        ("ip2p", ModelFamily.SD1, "eps", 8),
        ("depth", ModelFamily.SD2, "eps", 5),
        ("x4_upscaler", ModelFamily.SD2_V, "v", 7),
    ],
)
def test_variant_files_are_detected(files, variant, family, prediction, in_channels):
    spec = detect_checkpoint(files[variant], filename=f"{variant}.safetensors")
    assert spec.variant == variant
    assert spec.family is family and spec.prediction_type == prediction
    assert not spec.is_inpaint
    assert spec.unet_config == variant_parts(variant)[1]
    assert spec.unet_config.in_channels == in_channels
    assert spec.components == {"unet", "vae", "text"}


def test_x4_upscaler_config_and_vae_scale(files):
    spec = detect_checkpoint(files["x4_upscaler"], filename="x4.safetensors")
    cfg = spec.unet_config
    assert cfg == x4_unet_config()
    # Not SD2's 64-channel heads: 8 heads as in x4-upscaling.yaml (the only thing shapes do not show).
    assert (cfg.num_heads, cfg.num_head_channels) == (8, None)
    assert cfg.num_classes == 1000 and cfg.adm_in_channels is None
    assert cfg.disable_self_attentions == (False, True, False)
    assert spec.vae_config.scaling_factor == pytest.approx(0.08333)
    assert spec.vae_config.downscale == 4


def test_x4_prediction_follows_an_override_and_metadata(files):
    sd = files["x4_upscaler"]
    assert detect_checkpoint(sd, prediction_type="eps").prediction_type == "eps"
    spec = detect_checkpoint(sd, metadata={"modelspec.prediction_type": "epsilon"})
    assert (spec.prediction_type, spec.family) == ("eps", ModelFamily.SD2)


def test_plain_and_inpaint_files_keep_their_variant():
    assert detect_checkpoint(tiny_single_file_state_dict(ModelFamily.SD1)).variant == ""
    spec = detect_checkpoint(tiny_single_file_state_dict(ModelFamily.SD2, inpaint=True))
    assert (spec.variant, spec.is_inpaint, spec.prediction_type) == ("inpaint", True, "eps")


def test_a_seven_channel_unet_with_sd1_text_encoders_is_refused(files):
    sd = tiny_single_file_state_dict(ModelFamily.SD1)
    unet = {k[len(UNET_PREFIX) :]: v for k, v in files["x4_upscaler"].items() if k.startswith(UNET_PREFIX)}
    sd = {k: v for k, v in sd.items() if not k.startswith(UNET_PREFIX)} | dl.add_prefix(unet, UNET_PREFIX)
    # The x4 UNet's 32-wide context matches the tiny SD1 CLIP, so only the variant check can object.
    with pytest.raises(CheckpointError, match="x4 upscaler"):
        detect_checkpoint(sd, filename="odd.safetensors")


@pytest.mark.parametrize("variant", ["ip2p", "depth", "x4_upscaler"])
def test_variant_checkpoints_load_with_every_weight(tmp_path, variant):
    path = write_variant_checkpoint(tmp_path / f"{variant}.safetensors", variant, seed=2)
    ck = load_checkpoint(path)
    assert isinstance(ck.unet, UNetModel)
    assert ck.unet.config == variant_parts(variant)[1]
    assert ck.vae is not None and ck.text_encoder is not None
    if variant == "x4_upscaler":
        assert isinstance(ck.unet.label_emb, torch.nn.Embedding)
        assert ck.unet.label_emb.weight.shape == (1000, 128)
