"""Which UNet variant a checkpoint holds, read from the UNet's input width and its label embedding.

The extra input channels are concatenated after the noisy latent (``c_concat``); what they hold depends
on the model (the checkpoints' original LDM configs, and ComfyUI's ``supported_models`` for the ones it runs):

| in ch | variant | extra channels | other |
| --- | --- | --- | --- |
| 4 | "" (txt2img) | none | |
| 5 | "depth" (SD 2 depth, ``512-depth-ema``) | a depth map normalised to -1..1 | eps |
| 7 | "x4_upscaler" (``x4-upscaler-ema``) | the low-resolution RGB image, -1..1 | v; ``label_emb.weight``: the noise level as a class (1000 classes); 8 heads; attn1 on the text in the upper levels; VAE scale 0.08333 |
| 8 | "ip2p" (InstructPix2Pix) | the input image's VAE latent (not scaled) | |
| 9 | "inpaint" | mask + masked image latent | |
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import torch

from engine.diffusion.models.unet import UNetConfig

from .detect_prediction import Prediction
from .io import CheckpointError
from .spec import ModelFamily

INPAINT = "inpaint"
IP2P = "ip2p"
DEPTH = "depth"
X4_UPSCALER = "x4_upscaler"

# The x4 upscaler's latent scale (x4-upscaling.yaml scale_factor, ComfyUI's latent_formats.SD_X4).
X4_VAE_SCALE = 0.08333
# Its noise schedule (x4-upscaling.yaml linear_start / linear_end, the same "linear" beta shape as SD's).
X4_LINEAR_START = 0.0001
X4_LINEAR_END = 0.02

_BY_CHANNELS = {5: DEPTH, 8: IP2P, 9: INPAINT}
_ATTN1_K = re.compile(r"^input_blocks\.(\d+)\.1\.transformer_blocks\.0\.attn1\.to_k\.weight$")

Weights = Mapping[str, torch.Tensor]


def unet_variant(unet_sd: Weights, in_channels: int) -> str:
    """The variant name ("" for a plain 4-channel UNet or an unknown width)."""
    if in_channels == 7 and "label_emb.weight" in unet_sd:
        return X4_UPSCALER
    return _BY_CHANNELS.get(in_channels, "")


def variant_head_args(variant: str) -> dict[str, int]:
    """Head layout arguments that differ from the family's (the x4 upscaler has 8 heads, not 64-wide)."""
    return {"num_heads": 8} if variant == X4_UPSCALER else {}


def _levels_of_input_blocks(unet_sd: Weights) -> dict[int, int]:
    """input_blocks index -> UNet level (a ``.0.op`` downsampler closes a level)."""
    count = 1 + max((int(k.split(".")[1]) for k in unet_sd if k.startswith("input_blocks.")), default=-1)
    level, out = 0, {}
    for i in range(1, count):
        if f"input_blocks.{i}.0.op.weight" in unet_sd:
            level += 1
            continue
        out[i] = level
    return out


def refine_unet_config(config: UNetConfig, unet_sd: Weights) -> UNetConfig:
    """Add what the generic reader leaves out: the class-embedding size and, per level, whether the
    transformers' attn1 reads the text context (its key input is the context width, not the inner width)."""
    changes: dict[str, object] = {}
    if "label_emb.weight" in unet_sd:
        changes["num_classes"] = int(unet_sd["label_emb.weight"].shape[0])
    levels = _levels_of_input_blocks(unet_sd)
    flags = [False] * len(config.channel_mult)
    for key, w in unet_sd.items():
        m = _ATTN1_K.match(key)
        if m and int(m.group(1)) in levels and int(w.shape[1]) != int(w.shape[0]):
            flags[levels[int(m.group(1))]] = True
    if any(flags):
        changes["disable_self_attentions"] = tuple(flags)
    return dataclasses.replace(config, **changes) if changes else config  # type: ignore[arg-type]


def variant_prediction(pred: Prediction, variant: str) -> Prediction:
    """The x4 upscaler predicts v (ComfyUI's SD_X4Upscaler); an override or metadata still wins."""
    if variant != X4_UPSCALER or pred.source in ("override", "metadata", "v_pred key"):
        return pred
    return Prediction("v", "x4 upscaler", ModelFamily.SD2_V, ())


def check_variant_family(variant: str, family: ModelFamily, path: str) -> None:
    if variant == X4_UPSCALER and not family.is_sd2:
        raise CheckpointError(
            path,
            f"a 7-channel UNet with a noise-level embedding (SD x4 upscaler) but {family.value} text "
            "encoders; the x4 upscaler uses SD2's OpenCLIP-H",
        )


def variant_note(variant: str, in_channels: int) -> str | None:
    if variant in ("", INPAINT) and in_channels not in (4, 9):
        return f"UNet has {in_channels} input channels (4 = txt2img, 9 = inpainting); treated as a variant"
    if variant == DEPTH:
        return (
            "SD2 depth model: the depth map comes from the conditioning's 'concat_depth' (zeros without one)"
        )
    return None
