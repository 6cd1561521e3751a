"""Tensor helpers shared by the image, latent and mask nodes (not a node module: the pack loader skips
names starting with "_").

Resizing follows ComfyUI's `common_upscale` so that workflows give the same sizes and crops: an
optional centre crop to the target aspect ratio, then torch interpolation (or Pillow's Lanczos per
image, or spherical-linear "bislerp" for latents).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine import api

UPSCALE_METHODS_IMAGE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
UPSCALE_METHODS_LATENT = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]


def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop (…, H, W) symmetrically so its aspect ratio matches width/height (ComfyUI's "center")."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect = old_w / old_h
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Lanczos resize of (B, C, H, W) through Pillow, one 8-bit image at a time (as ComfyUI)."""
    out = []
    for image in samples.movedim(1, -1).cpu().numpy():
        array = np.clip(image * 255.0, 0, 255).astype(np.uint8)
        pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        resized = np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(resized.reshape(height, width, -1)))
    return torch.stack(out).movedim(-1, 1).to(samples.device, samples.dtype)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation along dim 1 (channels) with the magnitude interpolated linearly."""
    norm_a = a.norm(dim=1, keepdim=True)
    norm_b = b.norm(dim=1, keepdim=True)
    unit_a = a / norm_a.clamp_min(1e-8)
    unit_b = b / norm_b.clamp_min(1e-8)
    dot = (unit_a * unit_b).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    parallel = sin_omega.abs() < 1e-4
    wa = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * omega) / sin_omega.where(~parallel, 1.0))
    wb = torch.where(parallel, t, torch.sin(t * omega) / sin_omega.where(~parallel, 1.0))
    direction = wa * unit_a + wb * unit_b
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return direction * (norm_a * (1.0 - t) + norm_b * t)


def _bislerp_axis(samples: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resample one spatial axis: each output sample is the slerp of its two nearest input samples,
    at the same source coordinates bilinear interpolation (align_corners=False) would use."""
    length = samples.shape[dim]
    coords = ((torch.arange(size, dtype=torch.float64) + 0.5) * (length / size) - 0.5).clamp(0, length - 1)
    low = coords.floor().long()
    high = (low + 1).clamp(max=length - 1)
    t = (coords - low).to(samples.dtype)
    shape = [1] * samples.ndim
    shape[dim] = size
    a = samples.index_select(dim, low)
    b = samples.index_select(dim, high)
    return _slerp(a, b, t.reshape(shape))


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resize of latents that slerps between neighbouring channel vectors instead of lerping,
    keeping their norms (ComfyUI's "bislerp")."""
    out = _bislerp_axis(samples.float(), width, 3)
    out = _bislerp_axis(out, height, 2)
    return out.to(samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize (B, C, H, W) to (B, C, height, width) with one of the upscale methods."""
    if crop == "center":
        samples = center_crop_to_aspect(samples, width, height)
    if method == "lanczos":
        return lanczos(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method not in ("nearest-exact", "bilinear", "area", "bicubic", "nearest"):
        raise ValueError(f"unknown upscale method {method!r}")
    return F.interpolate(samples, size=(height, width), mode=method)


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Tile or cut the first dimension to `batch` entries (ComfyUI's repeat_to_batch_size)."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        reps = -(-batch // tensor.shape[0])
        return tensor.repeat((reps,) + (1,) * (tensor.ndim - 1))[:batch]
    return tensor


def composite_masked(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None,
    multiplier: int,
    resize_source: bool,
) -> torch.Tensor:
    """Paste (B, C, H, W) `source` into a copy of `destination` at (x, y) (in units of `multiplier`
    pixels), weighted by `mask` resized to the source; offsets may be negative (partly outside)."""
    destination = destination.clone()
    source = source.to(destination)
    if resize_source:
        source = F.interpolate(source, size=destination.shape[2:], mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    x = max(-source.shape[3] * multiplier, min(x, destination.shape[3] * multiplier))
    y = max(-source.shape[2] * multiplier, min(y, destination.shape[2] * multiplier))
    left, top = x // multiplier, y // multiplier
    if mask is None:
        weights = torch.ones_like(source[:, :1])
    else:
        weights = mask.to(destination).reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        weights = F.interpolate(weights, size=source.shape[2:], mode="bilinear")
        weights = repeat_to_batch(weights, source.shape[0])
    # The part of the source that lands inside the destination.
    src_top, src_left = max(0, -top), max(0, -left)
    dst_top, dst_left = max(0, top), max(0, left)
    height = min(source.shape[2] - src_top, destination.shape[2] - dst_top)
    width = min(source.shape[3] - src_left, destination.shape[3] - dst_left)
    if height <= 0 or width <= 0:
        return destination
    src = source[:, :, src_top : src_top + height, src_left : src_left + width]
    m = weights[:, :, src_top : src_top + height, src_left : src_left + width]
    dst = destination[:, :, dst_top : dst_top + height, dst_left : dst_left + width]
    destination[:, :, dst_top : dst_top + height, dst_left : dst_left + width] = src * m + dst * (1.0 - m)
    return destination


def as_mask(mask: torch.Tensor) -> torch.Tensor:
    """Any (H, W), (B, H, W) or (B, 1, H, W) mask as (B, H, W)."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


def composite_masked_inputs(socket: str, step: int) -> list[api.Input]:
    """ImageCompositeMasked's and LatentCompositeMasked's inputs (ComfyUI's): the same but for the socket
    type and the x/y step (8 pixels for latents)."""
    return [
        api.Input("destination", socket),
        api.Input("source", socket),
        api.Int("x", 0, min=0, max=api.MAX_RESOLUTION, step=step),
        api.Int("y", 0, min=0, max=api.MAX_RESOLUTION, step=step),
        api.Boolean("resize_source", False),
        api.Input("mask", api.MASK, optional=True),
    ]


def checked_mask(mask: Any) -> torch.Tensor:
    """A MASK input as float32 (B, H, W); an (H, W) mask gets a batch of one, other shapes are refused."""
    m = torch.as_tensor(mask, dtype=torch.float32)
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim != 3:
        raise ValueError(f"mask must be a MASK (batch, height, width), got shape {tuple(m.shape)}")
    return m


def gaussian_kernel(size: int, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """A normalised 2-D Gaussian over a size×size grid spanning -1..1 (ComfyUI's Blur/Sharpen kernel:
    sigma is in units of the radius, not pixels)."""
    axis = torch.linspace(-1.0, 1.0, size, device=device)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    kernel = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def filter2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve an IMAGE (B, H, W, C) channel-wise with a (k, k) kernel, reflecting at the borders."""
    radius = kernel.shape[-1] // 2
    channels = image.shape[-1]
    x = image.permute(0, 3, 1, 2)
    # Reflection needs the pad to be smaller than the image; tiny images fall back to edge replication.
    mode = "reflect" if radius < min(x.shape[-2], x.shape[-1]) else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    weight = kernel.to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=channels).permute(0, 2, 3, 1)


def rgb_from_int(color: int) -> tuple[float, float, float]:
    """0xRRGGBB (the canvas' colour widget) as floats 0..1."""
    return (((color >> 16) & 0xFF) / 255.0, ((color >> 8) & 0xFF) / 255.0, (color & 0xFF) / 255.0)
