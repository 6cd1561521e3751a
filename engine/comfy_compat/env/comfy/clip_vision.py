"""ComfyUI's comfy.clip_vision for custom packs: the image preprocessing and the output type. diffgraph
has no CLIP vision encoder: `load` says so when a node calls it."""

from __future__ import annotations

from typing import Any

from engine.comfy_compat.sd_bridge import CLIP_MEAN, CLIP_STD, clip_preprocess

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipVisionModel",
    "Output",
    "clip_preprocess",
    "load",
    "load_clipvision_from_sd",
]


class Output:
    """CLIP vision results (image_embeds, last_hidden_state, ...), read as attributes or items."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, item: Any) -> None:
        setattr(self, key, item)


class ClipVisionModel:
    """ComfyUI's CLIP vision model class; diffgraph cannot build one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("CLIP vision models are not supported by diffgraph")


def load(ckpt_path: str) -> Any:
    raise NotImplementedError(f"CLIP vision models are not supported by diffgraph (cannot load {ckpt_path})")


def load_clipvision_from_sd(sd: Any, prefix: str = "", convert_keys: bool = False) -> Any:
    raise NotImplementedError("CLIP vision models are not supported by diffgraph")
