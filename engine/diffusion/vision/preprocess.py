"""The image a CLIP vision tower sees, prepared as ComfyUI's ``clip_preprocess`` prepares it (so that the
embeddings match ComfyUI's): RGB only; the short side resized to the tower's size (bicubic, antialiased) and
centre-cropped ("center"), or the whole image squashed to a square ("none"); quantised to 8 bits (ComfyUI
rounds ``255 * x``, which the original CLIP pipeline does by going through a PIL image); normalised with the
tower's mean and standard deviation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .clip_vision import CLIP_MEAN, CLIP_STD


def clip_preprocess(
    image: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    crop: bool = True,
) -> torch.Tensor:
    """IMAGE (B, H, W, C) in 0..1 -> normalised pixels (B, 3, size, size), in the image's dtype."""
    pixels = image[..., :3].movedim(-1, 1)
    height, width = pixels.shape[2], pixels.shape[3]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            new_h, new_w = round(height * scale), round(width * scale)
        else:
            new_h, new_w = size, size
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bicubic", antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        pixels = pixels[:, :, top : top + size, left : left + size]
    pixels = torch.clip(255.0 * pixels, 0, 255).round() / 255.0
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - m) / s
