"""The PHOTOMAKER socket value: PhotoMaker's ID encoder (engine.diffusion.vision.photomaker) behind the model
manager, and PhotoMakerEncode's prompt handling as ComfyUI does it."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import torch

from engine.diffusion.checkpoints.io import SAFETENSORS_SUFFIXES, CheckpointError, read_state_dict
from engine.diffusion.vision.photomaker import PhotoMakerIDEncoder, build_photomaker
from engine.diffusion.vision.preprocess import clip_preprocess
from engine.handles.base import ManagedHandle
from engine.memory.dtypes import ModelRole, choose_dtype
from engine.memory.manager import ModelManager

TRIGGER_WORD = "photomaker"


class PhotoMakerHandle(ManagedHandle):
    @property
    def config(self) -> Any:
        return self.module.config

    def fuse(self, image: torch.Tensor, prompt_embeds: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """``prompt_embeds`` with the tokens at ``positions`` fused with the identity of ``image``'s first
        picture (float32, CPU)."""
        cfg = self.config
        with self.use() as module:
            p = next(module.parameters())
            pixels = clip_preprocess(
                image.to(p.device, torch.float32), cfg.image_size, cfg.mean, cfg.std, True
            )
            with torch.no_grad():
                out = module(pixels, prompt_embeds.to(p.device, p.dtype), positions)
        return out.to("cpu", torch.float32)  # type: ignore[no-any-return]


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return read_state_dict(path)
    # photomaker-v1.bin nests its parts ({"id_encoder": {...}, "lora_weights": {...}}): read_state_dict keeps
    # only top-level tensors, so load the (weights-only) pickle here.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, struct.error) as e:
        raise CheckpointError(
            path, f"not a readable weights-only PyTorch file ({str(e).splitlines()[0]})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("id_encoder"), dict):
        obj = obj["id_encoder"]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a dict of tensors, the file holds a {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_photomaker(path: str | os.PathLike[str], *, manager: ModelManager) -> PhotoMakerHandle:
    p = Path(path)
    try:
        model: PhotoMakerIDEncoder = build_photomaker(_read(p))
    except ValueError as e:
        raise CheckpointError(p, str(e)) from None
    choice = choose_dtype(manager.device_info, ModelRole.TEXT_ENCODER)
    model = model.to(choice.compute if choice.needs_cast else choice.storage)
    managed = manager.register(model, name=f"{p.name} (PhotoMaker)")
    return PhotoMakerHandle(manager.patcher(managed), manager=manager, name=p.name)


def photomaker_encode(
    photomaker: PhotoMakerHandle, image: torch.Tensor, clip: Any, text: str
) -> list[list[Any]]:
    """ComfyUI's PhotoMakerEncode: the trigger word is dropped from the prompt, and the token just before
    where it stood (the class word, "man" in "a photo of a man photomaker": token position = the trigger's
    1-based word number - 1, ComfyUI's one-token-per-word assumption) is fused with the image's identity.
    Without the trigger word the prompt is encoded as it is."""
    words = text.split(" ")
    index = words.index(TRIGGER_WORD) + 1 if TRIGGER_WORD in words else -1
    if index > 0:
        text = " ".join(words[: index - 1] + words[index:])
    cond, pooled = clip.encode(text)
    if index > 0:
        cond = photomaker.fuse(image, cond, [index - 1])
    return [[cond, {"pooled_output": pooled}]]


__all__ = ["PhotoMakerHandle", "load_photomaker", "photomaker_encode"]
