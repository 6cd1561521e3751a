"""Model values for node code: what travels on MODEL / CLIP / VAE / CONTROL_NET / UPSCALE_MODEL sockets,
the functions that load them from files, and LoRA / ControlNet application (imports torch).

These are the runtime handles of engine.handles, published here so node packs depend on `engine.api`
only; a node gets the model manager to load into from `context.models`.
"""

from __future__ import annotations

from engine.handles import (
    ClipHandle,
    ModelFileError,
    ModelHandle,
    VAEHandle,
    VAEMissingError,
    load_checkpoint_handles,
    load_clip_handle,
    load_unet_handle,
    load_vae_handle,
    require_vae,
)
from engine.handles.adapters import (
    AdapterFileError,
    ControlNetHandle,
    UpscaleModelHandle,
    apply_controlnet,
    apply_lora,
    load_controlnet,
    load_upscale_model,
    preprocess,
    upscale_image,
)
from engine.handles.clip_vision import (
    ClipVisionHandle,
    ClipVisionOutput,
    StyleModelHandle,
    apply_style_model,
    load_clip_vision_handle,
    load_style_model,
    load_unclip_checkpoint_handles,
)
from engine.handles.flow_loading import load_text_encoders_handle
from engine.handles.hypernetwork import apply_hypernetwork
from engine.handles.photomaker import PhotoMakerHandle, load_photomaker, photomaker_encode

__all__ = [
    "AdapterFileError",
    "ClipHandle",
    "ClipVisionHandle",
    "ClipVisionOutput",
    "ControlNetHandle",
    "ModelFileError",
    "ModelHandle",
    "PhotoMakerHandle",
    "StyleModelHandle",
    "UpscaleModelHandle",
    "VAEHandle",
    "VAEMissingError",
    "apply_controlnet",
    "apply_hypernetwork",
    "apply_lora",
    "apply_style_model",
    "load_checkpoint_handles",
    "load_clip_handle",
    "load_clip_vision_handle",
    "load_controlnet",
    "load_unet_handle",
    "load_photomaker",
    "load_style_model",
    "load_text_encoders_handle",
    "load_unclip_checkpoint_handles",
    "load_upscale_model",
    "load_vae_handle",
    "photomaker_encode",
    "preprocess",
    "require_vae",
    "upscale_image",
]
