"""ComfyUI's comfy.clip_vision for custom packs, on diffgraph's CLIP vision handles: `load(path)` and
`load_clipvision_from_sd(sd, prefix, convert_keys)` give the value CLIPVisionLoader gives (registered with the
runtime's model manager); `ClipVisionModel` is ComfyUI's name for that type (`isinstance` works, building one
from a JSON config does not); `Output` is the CLIP_VISION_OUTPUT type; `clip_preprocess` is ComfyUI's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.comfy_compat import sd_bridge as _bridge
from engine.comfy_compat.binding import current as _current
from engine.diffusion.vision.clip_vision import CLIP_MEAN, CLIP_STD
from engine.diffusion.vision.preprocess import clip_preprocess
from engine.handles.clip_vision import ClipVisionHandle as _ClipVisionHandle
from engine.handles.clip_vision import ClipVisionOutput as Output
from engine.handles.clip_vision import clip_vision_handle_from_state_dict as _from_state_dict
from engine.handles.clip_vision import load_clip_vision_handle as _load

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipVisionModel",
    "Output",
    "clip_preprocess",
    "load",
    "load_clipvision_from_sd",
]

_services = _current().services

ClipVisionModel = _bridge.handle_alias("ClipVisionModel", _ClipVisionHandle, __name__)


def load(ckpt_path: str) -> Any:
    """A CLIP vision file (Hugging Face or OpenCLIP layout), as CLIPVisionLoader loads it."""
    return _load(ckpt_path, manager=_bridge.manager_of(_services))


def load_clipvision_from_sd(sd: Mapping[str, Any], prefix: str = "", convert_keys: bool = False) -> Any:
    """A CLIP vision value from a state dict; keys under `prefix` (an OpenCLIP visual tower, e.g. an unCLIP
    checkpoint's 'embedder.model.visual.', is recognised and converted whatever `convert_keys` says)."""
    body = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return _from_state_dict(body, manager=_bridge.manager_of(_services), name="clip vision")
