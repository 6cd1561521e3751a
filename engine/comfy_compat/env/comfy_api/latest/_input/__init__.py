"""ComfyUI's `comfy_api.latest._input`: the value types of the V3 inputs (images, masks and latents are
tensors and dicts here, as in ComfyUI)."""

from __future__ import annotations

from typing import Any

import torch

ImageInput = torch.Tensor
MaskInput = torch.Tensor
AudioInput = dict[str, Any]
LatentInput = dict[str, Any]


class VideoInput:
    """The VIDEO value type. diffgraph has no video values; packs only test isinstance against it."""


__all__ = ["AudioInput", "ImageInput", "LatentInput", "MaskInput", "VideoInput"]
