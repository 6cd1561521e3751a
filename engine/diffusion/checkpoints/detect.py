"""Which model family a checkpoint holds, read from its keys and tensor shapes.

`detect_checkpoint` refuses files of other kinds (LoRA, VAE, ControlNet, embedding, bare UNet or text
encoder) with a message that says where they belong, then asks one detector per component:

- ``detect_unet``: the UNet's input channels, context width and ADM size (`unet_facts`), its config;
- ``detect_text``: the text encoders, and the family they imply together with the UNet (table there);
- ``detect_prediction``: eps or v prediction (and so SD2 vs SD2_V);
- ``detect_vae``: the VAE config.

The result is a `CheckpointSpec` (``spec.py``, with the key prefixes and `ModelFamily`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from . import detect_variant as dv
from .detect_prediction import detect_prediction
from .detect_text import detect_text_encoders
from .detect_unet import unet_config_for_family, unet_facts
from .detect_vae import vae_config_for_family, vae_config_for_file
from .diffusers_layout import strip_prefix
from .flow_detect import is_flow_state_dict
from .io import CheckpointError
from .spec import UNET_PREFIX, VAE_PREFIX, CheckpointSpec, ModelFamily

# Callers name the family and the prefixes through this module, as before the split.
__all__ = ["UNET_PREFIX", "VAE_PREFIX", "CheckpointSpec", "ModelFamily", "detect_checkpoint"]


# ---- non-checkpoint files --------------------------------------------------------------------

_LORA_MARKERS = (
    ".lora_down.",
    ".lora_up.",
    ".lora_A.",
    ".lora_B.",
    "lora_unet_",
    "lora_te",
    ".hada_w1_",
    ".lokr_w1",
)


def _top_prefixes(keys: list[str], depth: int = 2, limit: int = 8) -> str:
    counts = Counter(".".join(k.split(".")[:depth]) for k in keys)
    return ", ".join(f"{p}.* ({n})" for p, n in counts.most_common(limit))


def _reject_other_kinds(keys: list[str], path: str) -> None:
    """Raise a specific CheckpointError when the file is a known non-checkpoint kind."""
    if any(m in k or k.startswith(m) for k in keys for m in _LORA_MARKERS):
        sample = next(k for k in keys if any(m in k or k.startswith(m) for m in _LORA_MARKERS))
        raise CheckpointError(
            path,
            f"this is a LoRA (e.g. key {sample!r}), not a full checkpoint: put it in models/loras "
            "and apply it to a checkpoint with LoraLoader",
        )
    if any(k.startswith(("control_model.", "input_hint_block.")) for k in keys) or any(
        "controlnet_cond_embedding" in k for k in keys
    ):
        raise CheckpointError(
            path,
            "this is a ControlNet, not a checkpoint: put it in models/controlnet and use ControlNetLoader",
        )
    if set(keys) <= {"emb_params", "clip_l", "clip_g", "string_to_param.*", "string_to_token.*"}:
        raise CheckpointError(
            path,
            "this is a textual-inversion embedding: put it in models/embeddings and write embedding:NAME",
        )
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    if not has_unet:
        bare_vae = any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.")) for k in keys)
        prefixed_vae = any(k.startswith(VAE_PREFIX) for k in keys)
        if bare_vae or (
            prefixed_vae and not any(k.startswith(("cond_stage_model.", "conditioner.")) for k in keys)
        ):
            raise CheckpointError(
                path,
                "this is a VAE file (only encoder/decoder weights, no UNet): put it in models/vae "
                "and load it with VAELoader",
            )
        if any(k.startswith("input_blocks.0.0.") for k in keys) or any(
            k.startswith("down_blocks.") for k in keys
        ):
            raise CheckpointError(
                path,
                "this file holds a bare UNet (no 'model.diffusion_model.' prefix, no text encoder or VAE): "
                "load it as a diffusion model (UNETLoader), not as a checkpoint",
            )
        if any(k.startswith(("text_model.", "transformer.resblocks.")) for k in keys):
            raise CheckpointError(
                path, "this is a text-encoder file, not a checkpoint: load it with CLIPLoader"
            )
        shapes_hint = _top_prefixes(keys)
        raise CheckpointError(
            path,
            "not a Stable Diffusion checkpoint: no UNet weights under 'model.diffusion_model.' were found. "
            f"Looked for 'model.diffusion_model.*', 'first_stage_model.*', 'cond_stage_model.*' and "
            f"'conditioner.embedders.*'; the file's keys start with: {shapes_hint}",
        )


# ---- main entry ----------------------------------------------------------------------------------


def _turbo_note(path: str, meta: Mapping[str, str]) -> list[str]:
    name = Path(path).name.lower()
    title = meta.get("modelspec.title", "").lower() + meta.get("modelspec.architecture", "").lower()
    if "turbo" in name or "turbo" in title:
        return [
            "SD-Turbo/SDXL-Turbo (adversarial diffusion distillation): same architecture as its base; "
            "sample with 1-4 steps and cfg 1.0"
        ]
    return []


def detect_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    *,
    filename: str | Path = "<state dict>",
    prediction_type: str | None = None,
    metadata: Mapping[str, str] | None = None,
    infer_configs: bool = True,
) -> CheckpointSpec:
    """Identify the family, prediction type, configs and components of a single-file checkpoint.

    ``state_dict`` maps the file's keys to tensors (values are only read for the SD2 weight
    statistic). ``infer_configs=False`` skips building UNet/VAE configs (for callers that only need
    the family). Raises :class:`CheckpointError` naming the file for anything that is not an SD1,
    SD2 or SDXL checkpoint, with a specific message for LoRAs, VAEs, ControlNets and embeddings.
    """
    path = str(filename)
    keys = list(state_dict.keys())
    if not keys:
        raise CheckpointError(path, "the file contains no tensors (empty state dict)")
    if is_flow_state_dict(state_dict):
        raise CheckpointError(
            path,
            "this is an SD3/SD3.5 or FLUX.1 (flow-matching transformer) file, not an SD1/SD2/SDXL "
            "checkpoint: it loads through flow_loader.load_flow_checkpoint / load_diffusion_model",
        )
    _reject_other_kinds(keys, path)
    unet_sd = strip_prefix(state_dict, UNET_PREFIX)
    facts = unet_facts(unet_sd, path)
    family, encoders, notes = detect_text_encoders(
        state_dict, context_dim=facts.context_dim, adm_dim=facts.adm_dim, path=path
    )
    variant = dv.unet_variant(unet_sd, facts.in_channels)
    dv.check_variant_family(variant, family, path)
    is_inpaint = variant == dv.INPAINT
    if (note := dv.variant_note(variant, facts.in_channels)) is not None:
        notes.append(note)
    meta = dict(metadata or {})
    # Only plain 4-channel SD2 UNets get the eps/v weight statistic (ComfyUI's SD20.model_type).
    pred = detect_prediction(
        state_dict,
        unet_sd,
        family,
        is_inpaint=facts.in_channels != 4,
        metadata=meta,
        override=prediction_type,
    )
    pred = dv.variant_prediction(pred, variant)
    notes += [*pred.notes, *_turbo_note(path, meta)]
    vae_sd = strip_prefix(state_dict, VAE_PREFIX)
    if not vae_sd:
        notes.append(
            f"{Path(path).name} contains no VAE weights (no 'first_stage_model.*' keys): load a VAE with "
            "VAELoader (e.g. the family's standard VAE from models/vae)"
        )
    components = {"unet"} | ({"vae"} if vae_sd else set()) | ({"text"} if encoders else set())
    return CheckpointSpec(
        family=pred.family,
        prediction_type=pred.kind,
        prediction_source=pred.source,
        is_inpaint=is_inpaint,
        unet_config=_unet_config(unet_sd, pred.family, variant, path) if infer_configs else None,
        vae_config=_vae_config(vae_sd, pred.family, variant, path) if infer_configs and vae_sd else None,
        text_encoders=encoders,
        components=frozenset(components),
        filename=path,
        notes=tuple(notes),
        variant=variant,
    )


def _unet_config(unet_sd: Mapping[str, torch.Tensor], family: ModelFamily, variant: str, path: str) -> object:
    config = unet_config_for_family(unet_sd, family, path, **dv.variant_head_args(variant))
    return dv.refine_unet_config(config, unet_sd)


def _vae_config(vae_sd: Mapping[str, torch.Tensor], family: ModelFamily, variant: str, path: str) -> object:
    if variant == dv.X4_UPSCALER:
        return vae_config_for_file(vae_sd, dv.X4_VAE_SCALE, path)
    return vae_config_for_family(vae_sd, family, path)
