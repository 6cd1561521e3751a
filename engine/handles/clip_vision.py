"""The CLIP_VISION, CLIP_VISION_OUTPUT and STYLE_MODEL socket values, and the unCLIP checkpoint loader.

A CLIP vision tower is registered with the model manager like a text encoder (same dtype role, as in
ComfyUI) and loaded only while it encodes. Its output carries ComfyUI's attribute names (packs such as
IPAdapter read ``image_embeds`` / ``penultimate_hidden_states`` directly). Style models are a few MB and
run on the CPU copy, moved to the compute device for the call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.diffusion.checkpoints.io import CheckpointError, read_state_dict
from engine.diffusion.vision.clip_vision import ClipVisionModel, VisionConfig
from engine.diffusion.vision.loading import UNCLIP_VISUAL_PREFIX, build_clip_vision, has_openclip_visual
from engine.diffusion.vision.preprocess import clip_preprocess
from engine.diffusion.vision.style import append_style_tokens, build_style_model
from engine.handles.base import ManagedHandle
from engine.memory.dtypes import ModelRole, choose_dtype
from engine.memory.manager import ModelManager


class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: ``last_hidden_state``, ``image_embeds``, ``penultimate_hidden_states``,
    ``mm_projected`` (None without a LLaVA projector) and, for SigLIP, ``all_hidden_states``; read as
    attributes or items (ComfyUI's ``clip_vision.Output``). Tensors are float32 on the CPU."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, item: Any) -> None:
        setattr(self, key, item)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={tuple(v.shape)}" for k, v in vars(self).items() if isinstance(v, torch.Tensor)
        )
        return f"ClipVisionOutput({fields})"


class ClipVisionHandle(ManagedHandle):
    """A CLIP / SigLIP vision tower behind the model manager (ComfyUI's ``ClipVisionModel``)."""

    @property
    def config(self) -> VisionConfig:
        return self.module.config  # type: ignore[no-any-return]

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def image_mean(self) -> list[float]:
        return list(self.config.mean)

    @property
    def image_std(self) -> list[float]:
        return list(self.config.std)

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        """IMAGE (B, H, W, C) in 0..1 -> outputs; ``crop``: centre-crop to a square (False: squash)."""
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
            raise ValueError(
                f"CLIP vision encode expects an IMAGE (batch, height, width, channels), got {getattr(image, 'shape', image)}"
            )
        cfg = self.config
        siglip = cfg.kind == "siglip"
        with self.use() as module:
            device = next(module.parameters()).device
            pixels = clip_preprocess(image.to(device, torch.float32), cfg.image_size, cfg.mean, cfg.std, crop)
            with torch.no_grad():
                out = module(pixels, all_hidden_states=siglip)
        result = ClipVisionOutput()
        result["last_hidden_state"] = out.last_hidden_state.to("cpu", torch.float32)
        result["image_embeds"] = out.image_embeds.to("cpu", torch.float32)
        result["penultimate_hidden_states"] = out.penultimate_hidden_states.to("cpu", torch.float32)
        result["mm_projected"] = (
            None if out.mm_projected is None else out.mm_projected.to("cpu", torch.float32)
        )
        if out.hidden_states is not None:
            result["all_hidden_states"] = out.hidden_states.to("cpu", torch.float32)
        return result

    def get_sd(self) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"ClipVisionHandle({self.name!r}, {cfg.kind}, width={cfg.hidden_size}, layers={cfg.num_layers})"
        )


def _dtype(manager: ModelManager) -> torch.dtype:
    choice = choose_dtype(manager.device_info, ModelRole.TEXT_ENCODER)
    # fp8 is a storage format that needs per-layer casting hooks; the vision tower is small: compute dtype.
    return choice.compute if choice.needs_cast else choice.storage


def clip_vision_handle_from_state_dict(
    sd: Mapping[str, torch.Tensor], *, manager: ModelManager, name: str
) -> ClipVisionHandle:
    dtype = _dtype(manager)
    model = build_clip_vision(sd, dtype=dtype)
    managed = manager.register(model, name=f"{name} (CLIP vision)")
    return ClipVisionHandle(manager.patcher(managed), manager=manager, name=name)


def load_clip_vision_handle(path: str | os.PathLike[str], *, manager: ModelManager) -> ClipVisionHandle:
    """A file from models/clip_vision (HF or OpenCLIP layout); CheckpointError naming it otherwise."""
    p = Path(path)
    sd = read_state_dict(p)
    try:
        return clip_vision_handle_from_state_dict(sd, manager=manager, name=p.name)
    except ValueError as e:
        raise CheckpointError(p, f"invalid CLIP vision file: {e}") from None


# ---- style models ---------------------------------------------------------------------------------


@dataclass
class StyleModelHandle:
    """STYLE_MODEL: a T2I-Adapter style model or FLUX.1 Redux (engine.diffusion.vision.style)."""

    module: nn.Module
    name: str
    device: torch.device | str = "cpu"

    @property
    def model(self) -> nn.Module:  # ComfyUI's StyleModel.model
        return self.module

    def get_cond(self, output: Any) -> torch.Tensor:
        """The style tokens (B, tokens, context) of a CLIP_VISION_OUTPUT's last_hidden_state, float32, CPU."""
        hidden = torch.as_tensor(output.last_hidden_state)
        module = self.module.to(self.device)
        try:
            with torch.no_grad():
                return module(hidden.to(self.device, torch.float32)).to("cpu", torch.float32)  # type: ignore[no-any-return]
        finally:
            module.to("cpu")


def load_style_model(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> StyleModelHandle:
    p = Path(path)
    sd = read_state_dict(p, dtype=torch.float32)
    try:
        return StyleModelHandle(build_style_model(sd), p.name, device)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(p, f"invalid style model: {e}") from None


def apply_style_model(
    conditioning: list[list[Any]], style: StyleModelHandle, output: Any, strength: float, strength_type: str
) -> list[list[Any]]:
    """StyleModelApply: the style tokens of `output` appended to every entry (see append_style_tokens)."""
    return append_style_tokens(conditioning, style.get_cond(output), strength, strength_type)


# ---- unCLIP checkpoints --------------------------------------------------------------------------------


def load_checkpoint_clip_vision(
    path: str | os.PathLike[str], *, manager: ModelManager
) -> ClipVisionHandle | None:
    """The image encoder an unCLIP checkpoint stores under ``embedder.model.visual.`` (None without one)."""
    p = Path(path)
    try:
        sd = read_state_dict(p, keys_filter=lambda k: k.startswith(UNCLIP_VISUAL_PREFIX))
    except CheckpointError:  # no tensor under the prefix (a missing or broken file fails the checkpoint load)
        return None
    if not has_openclip_visual(sd, UNCLIP_VISUAL_PREFIX):
        return None
    try:
        return clip_vision_handle_from_state_dict(sd, manager=manager, name=p.name)
    except ValueError as e:
        raise CheckpointError(p, f"invalid unCLIP image encoder ('{UNCLIP_VISUAL_PREFIX}*'): {e}") from None


def load_unclip_checkpoint_handles(
    path: str | os.PathLike[str],
    *,
    manager: ModelManager,
    embeddings_folder: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any, Any, ClipVisionHandle | None]:
    """(MODEL, CLIP, VAE, CLIP_VISION) of an unCLIP checkpoint: the checkpoint as CheckpointLoaderSimple
    loads it (its UNet's ``y`` comes from "unclip_conditioning", see engine.diffusion.vision.unclip) and
    its image encoder (None when the file has none, as in ComfyUI)."""
    from engine.handles.loading import load_checkpoint_handles

    model, clip, vae = load_checkpoint_handles(path, manager=manager, embeddings_folder=embeddings_folder)
    return model, clip, vae, load_checkpoint_clip_vision(path, manager=manager)


__all__ = [
    "ClipVisionHandle",
    "ClipVisionModel",
    "ClipVisionOutput",
    "StyleModelHandle",
    "apply_style_model",
    "clip_vision_handle_from_state_dict",
    "load_checkpoint_clip_vision",
    "load_clip_vision_handle",
    "load_style_model",
    "load_unclip_checkpoint_handles",
]
