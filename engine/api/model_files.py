"""Merging, saving and LoRA extraction for node code (imports torch): ComfyUI's ModelMerge* / CLIPMerge*
arithmetic as weight patches on clones, the state dicts the saving nodes write in ComfyUI's key layouts, and
LoRA extraction from a model difference. Re-exported from engine.handles so node packs depend on
`engine.api` only."""

from __future__ import annotations

from engine.handles.lora_extract import LORA_TYPES, clip_lora, model_lora
from engine.handles.merging import (
    CLIP_MERGE_SKIPPED_SUFFIXES,
    add_strengths,
    block_strengths,
    merge,
    ratio_strengths,
    subtract_strengths,
)
from engine.handles.saving import (
    SaveError,
    checkpoint_metadata,
    checkpoint_state_dict,
    clip_file_state_dicts,
    save_safetensors,
    unet_checkpoint_state_dict,
    vae_state_dict,
)

__all__ = [
    "CLIP_MERGE_SKIPPED_SUFFIXES",
    "LORA_TYPES",
    "SaveError",
    "add_strengths",
    "block_strengths",
    "checkpoint_metadata",
    "checkpoint_state_dict",
    "clip_file_state_dicts",
    "clip_lora",
    "merge",
    "model_lora",
    "ratio_strengths",
    "save_safetensors",
    "subtract_strengths",
    "unet_checkpoint_state_dict",
    "vae_state_dict",
]
