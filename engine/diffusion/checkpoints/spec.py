"""What detection reports about a checkpoint: key prefixes, model families and the spec types.

Kept apart from the detectors so that each of them (UNet, VAE, text encoders, prediction type)
and the loader can share these names without importing one another.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

SD1_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SD1_CLIP_LEGACY_PREFIX = "cond_stage_model.transformer."  # transformers < 4.x layout without text_model.
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
SGM_OPENCLIP0_PREFIX = "conditioner.embedders.0.model."


class ModelFamily(enum.StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"  # eps prediction, 512-base (SD-Turbo has this architecture, too)
    SD2_V = "sd2_v"  # v prediction, 768-v
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"

    @property
    def is_sdxl(self) -> bool:
        return self in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER)

    @property
    def is_sd2(self) -> bool:
        return self in (ModelFamily.SD2, ModelFamily.SD2_V)


@dataclass(frozen=True)
class TextEncoderSpec:
    kind: str  # "clip_l" (OpenAI CLIP ViT-L), "clip_h" (OpenCLIP ViT-H), "clip_g" (OpenCLIP ViT-bigG)
    prefix: str  # key prefix inside the checkpoint
    layout: str  # "hf" or "openclip"
    width: int
    layers: int


@dataclass(frozen=True)
class CheckpointSpec:
    family: ModelFamily
    prediction_type: str  # "eps" or "v"
    prediction_source: str  # "override", "metadata", "v_pred key", "weight statistic", "default"
    is_inpaint: bool
    unet_config: Any  # engine.diffusion.models.unet.UNetConfig | None
    vae_config: Any  # engine.diffusion.models.vae.VAEConfig | None
    text_encoders: tuple[TextEncoderSpec, ...]
    components: frozenset[str]  # subset of {"unet", "vae", "text"} present in the file
    filename: str = ""
    unet_prefix: str = UNET_PREFIX
    vae_prefix: str = VAE_PREFIX
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The UNet variant by its extra input channels: "" (txt2img), "inpaint", "ip2p", "depth",
    # "x4_upscaler" (detect_variant.py).
    variant: str = ""

    @property
    def context_dim(self) -> int | None:
        return getattr(self.unet_config, "context_dim", None)


def require_key(sd: Mapping[str, torch.Tensor], key: str, what: str, hint: str) -> torch.Tensor:
    """``sd[key]``, or a ValueError saying that ``sd`` is not ``what`` (with its first keys, and ``hint``)."""
    if key not in sd:
        sample = ", ".join(sorted(sd)[:5])
        raise ValueError(f"not {what} state dict: key {key!r} is missing (first keys: {sample}). {hint}")
    return sd[key]


def vae_scaling_factor(family: ModelFamily | None) -> float:
    # Latent scaling factors from the original configs: 0.18215 (SD1/SD2, LDM paper appendix), 0.13025 (SDXL).
    return 0.13025 if family is not None and family.is_sdxl else 0.18215
