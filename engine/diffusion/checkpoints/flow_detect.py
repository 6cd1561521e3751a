"""Which flow-matching transformer family (SD3 / SD3.5 MMDiT, FLUX.1) a weight file holds, and its layout.

File layouts (key prefixes as ComfyUI writes and reads them, ``comfy/supported_models.py``):

- all-in-one checkpoint (``sd3.5_large.safetensors``): ``model.diffusion_model.*`` (the transformer),
  ``first_stage_model.*`` (SD3 VAE; ComfyUI saves Flux's under ``vae.``), and the text encoders under
  ``text_encoders.clip_l.transformer.*``, ``text_encoders.clip_g.transformer.*`` and
  ``text_encoders.t5xxl.transformer.*``;
- diffusion-model-only (``models/diffusion_models``, e.g. ``flux1-dev.safetensors``): the transformer's
  keys without any prefix (files that kept ``model.diffusion_model.`` and hold nothing else also count);
- fp8 scaled (``*_fp8_scaled``): float8 e4m3fn weights with one float32 ``<layer>.scale_weight`` per
  layer (real weight = stored weight * scale) and a ``scaled_fp8`` marker tensor under each model's prefix.

The family comes from marker keys (``joint_blocks.0.context_block.attn.qkv.weight`` for MMDiT,
``double_blocks.0.img_attn.norm.key_norm.scale`` + ``img_in.weight`` for Flux), the configs from shapes
(``detect_mmdit``, ``detect_flux``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.diffusion.models import latent_formats
from engine.diffusion.models.latent_formats import LatentFormat

from .detect_flux import FLUX_MARKER, flux_config_from_state_dict, flux_variant
from .detect_mmdit import MMDIT_MARKER, mmdit_config_from_state_dict, mmdit_variant
from .detect_vae import vae_config_for_file
from .diffusers_layout import strip_prefix
from .io import CheckpointError
from .spec import UNET_PREFIX, VAE_PREFIX

FLUX_VAE_PREFIX = "vae."
TEXT_PREFIX = "text_encoders."
# Text encoders of the all-in-one files: kind -> key prefix (the model's own keys follow).
TEXT_ENCODER_PREFIXES = {
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
}
SCALED_FP8_KEY = "scaled_fp8"
# Default sampling shift of each family (ComfyUI's sampling_settings; Flux dev's 1.15 is ModelSamplingFlux's
# default ``mu``, schnell samples unshifted with multiplier 1).
DEFAULT_SHIFT = {"sd3": 3.0, "flux": 1.15, "flux_schnell": 1.0}


@dataclass(frozen=True)
class FlowSpec:
    family: str  # "sd3" or "flux"
    variant: str  # "sd3_medium", "sd3.5_large", "sd3.5_medium", "flux_dev", "flux_schnell", ...
    layout: str  # "all_in_one" or "diffusion_model"
    transformer_config: Any  # MMDiTConfig | FluxConfig
    transformer_prefix: str
    latent_format: LatentFormat
    vae_config: Any = None  # VAEConfig | None
    vae_prefix: str | None = None
    text_encoders: tuple[str, ...] = ()  # kinds present: "clip_l", "clip_g", "t5xxl"
    scaled_fp8: bool = False  # some weights are float8 with per-layer scale_weight
    filename: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def prediction_type(self) -> str:
        return "flow"

    @property
    def components(self) -> frozenset[str]:
        return frozenset(
            {"unet"}
            | ({"vae"} if self.vae_config is not None else set())
            | ({"text"} if self.text_encoders else set())
        )


def vae16_format(filename: str) -> LatentFormat:
    """SD3 or Flux latent format for a 16-channel VAE file (same architecture; told apart by name)."""
    name = Path(filename).name.lower()
    return latent_formats.FLUX if name.startswith("ae.") or "flux" in name else latent_formats.SD3


def _transformer_prefix(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The prefix under which an MMDiT or Flux transformer's keys sit, or None for other files."""
    for prefix in (UNET_PREFIX, ""):
        if prefix + MMDIT_MARKER in sd or (prefix + FLUX_MARKER in sd and prefix + "img_in.weight" in sd):
            return prefix
    return None


def is_flow_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when ``sd`` holds an MMDiT or Flux transformer (bare or under ``model.diffusion_model.``)."""
    return _transformer_prefix(sd) is not None


def has_scaled_fp8(sd: Mapping[str, Any]) -> bool:
    return any(k.endswith((".scale_weight", SCALED_FP8_KEY)) for k in sd)


def _vae_part(sd: Mapping[str, torch.Tensor], family: str, path: str) -> tuple[Any, str | None]:
    fmt = latent_formats.SD3 if family == "sd3" else latent_formats.FLUX
    for prefix in (VAE_PREFIX, FLUX_VAE_PREFIX):
        vae_sd = strip_prefix(sd, prefix)
        if vae_sd:
            return vae_config_for_file(vae_sd, fmt.scale_factor, path, fmt.shift_factor), prefix
    return None, None


def detect_flow_file(
    sd: Mapping[str, torch.Tensor],
    *,
    filename: str | os.PathLike[str] = "<state dict>",
    key_names: Iterable[str] | None = None,
) -> FlowSpec:
    """Identify an SD3/SD3.5 or FLUX.1 file: family, variant, layout, configs and parts present.

    ``sd`` maps the file's keys to tensors (only shapes are read); ``key_names``: all of the file's
    keys when ``sd`` holds only some of them (a loader that skipped the text encoders still reports
    them as present). Raises CheckpointError naming the file when it holds neither transformer or its
    shapes contradict one another.
    """
    path = str(filename)
    prefix = _transformer_prefix(sd)
    if prefix is None:
        raise CheckpointError(
            path,
            f"not an SD3/SD3.5 or FLUX.1 model: neither '{MMDIT_MARKER}' nor '{FLUX_MARKER}' was found "
            f"(bare or under '{UNET_PREFIX}')",
        )
    body = (
        strip_prefix(sd, prefix) if prefix else {k: v for k, v in sd.items() if not k.startswith(TEXT_PREFIX)}
    )
    body = {
        k: v for k, v in body.items() if not k.endswith((".scale_weight", ".scale_input", SCALED_FP8_KEY))
    }
    config: Any
    try:
        if MMDIT_MARKER in body:
            family, config = "sd3", mmdit_config_from_state_dict(body)
            variant = mmdit_variant(config)
        else:
            family, config = "flux", flux_config_from_state_dict(body)
            variant = flux_variant(config)
    except ValueError as e:
        raise CheckpointError(path, f"cannot read the transformer configuration: {e}") from None
    vae_config, vae_prefix = _vae_part(sd, family, path) if prefix else (None, None)
    names = list(sd if key_names is None else key_names)
    texts = tuple(k for k, p in TEXT_ENCODER_PREFIXES.items() if any(key.startswith(p) for key in names))
    notes = []
    if prefix and vae_config is None:
        notes.append(
            "no VAE weights in the file: load the family's VAE (ae.safetensors for Flux) with VAELoader"
        )
    if variant == "flux_fill":
        notes.append("FLUX.1 Fill: 96 input channels (latent + masked-image latent + 64 mask channels)")
    return FlowSpec(
        family=family,
        variant=variant,
        layout="all_in_one" if prefix and (vae_config is not None or texts) else "diffusion_model",
        transformer_config=config,
        transformer_prefix=prefix,
        latent_format=latent_formats.SD3 if family == "sd3" else latent_formats.FLUX,
        vae_config=vae_config,
        vae_prefix=vae_prefix,
        text_encoders=texts,
        scaled_fp8=has_scaled_fp8(dict.fromkeys(names)),
        filename=path,
        notes=tuple(notes),
    )


def default_shift(spec: FlowSpec) -> float:
    """The family's default sampling shift (SD3 3.0, Flux dev 1.15, schnell 1.0)."""
    if spec.family == "sd3":
        return DEFAULT_SHIFT["sd3"]
    return DEFAULT_SHIFT["flux"] if spec.transformer_config.guidance_embed else DEFAULT_SHIFT["flux_schnell"]
