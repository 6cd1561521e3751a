"""Latent nodes that need no model: empty latents, resizing, compositing, batches, transforms, masks.

A LATENT is a dict {"samples": (B, C, h, w), "noise_mask"?: (B|1, 1, H, W), "batch_index"?: [int]}
(DESIGN.md §1). Pixel coordinates in widgets are divided by 8 (the SD VAE's downscale factor), as in
ComfyUI. Nodes never modify their inputs in place: outputs are cached and shared.
"""

from __future__ import annotations

from typing import Any

import torch

from engine import api

from ._image_ops import (
    CROP_METHODS,
    UPSCALE_METHODS_LATENT,
    common_upscale,
    composite_masked,
    composite_masked_inputs,
    repeat_to_batch,
)

Latent = dict[str, Any]


def _copy(latent: Latent, samples: torch.Tensor) -> Latent:
    out = dict(latent)
    out["samples"] = samples
    return out


@api.node(
    "EmptyLatentImage",
    category="latent",
    display_name="Empty Latent Image",
    inputs=[
        api.Int("width", 512, min=16, max=api.MAX_RESOLUTION, step=8),
        api.Int("height", 512, min=16, max=api.MAX_RESOLUTION, step=8),
        api.Int("batch_size", 1, min=1, max=4096, step=None),
    ],
    outputs=[api.LATENT],
)
def empty_latent_image(width: int, height: int, batch_size: int = 1):
    """A batch of all-zero latents for a width×height image (4 channels, 1/8 resolution)."""
    return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


def _upscale_size(samples: torch.Tensor, width: int, height: int) -> tuple[int, int] | None:
    """Target pixel size for LatentUpscale: 0 means "keep the aspect ratio"; at least 64 pixels."""
    if width == 0 and height == 0:
        return None
    if width == 0:
        height = max(64, height)
        width = max(64, round(samples.shape[-1] * height / samples.shape[-2]))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(samples.shape[-2] * width / samples.shape[-1]))
    else:
        width, height = max(64, width), max(64, height)
    return width, height


@api.node(
    "LatentUpscale",
    category="latent",
    display_name="Upscale Latent",
    inputs=[
        api.Input("samples", api.LATENT),
        api.Combo("upscale_method", UPSCALE_METHODS_LATENT),
        api.Int("width", 512, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("height", 512, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Combo("crop", CROP_METHODS),
    ],
    outputs=[api.LATENT],
)
def latent_upscale(samples: Latent, upscale_method: str, width: int, height: int, crop: str):
    size = _upscale_size(samples["samples"], width, height)
    if size is None:
        return (samples,)
    resized = common_upscale(samples["samples"], size[0] // 8, size[1] // 8, upscale_method, crop)
    return (_copy(samples, resized),)


@api.node(
    "LatentUpscaleBy",
    category="latent",
    display_name="Upscale Latent By",
    inputs=[
        api.Input("samples", api.LATENT),
        api.Combo("upscale_method", UPSCALE_METHODS_LATENT),
        api.Float("scale_by", 1.5, min=0.01, max=8.0, step=0.01),
    ],
    outputs=[api.LATENT],
)
def latent_upscale_by(samples: Latent, upscale_method: str, scale_by: float):
    s = samples["samples"]
    width = round(s.shape[-1] * scale_by)
    height = round(s.shape[-2] * scale_by)
    return (_copy(samples, common_upscale(s, width, height, upscale_method, "disabled")),)


def _edge_ramp(length: int, feather: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Per-position weights along one axis: the first/last `feather` positions ramp (t+1)/feather."""
    ramp = torch.ones(length)
    for t in range(min(feather, length)):
        weight = (t + 1) / feather
        if at_start:
            ramp[t] *= weight
        if at_end:
            ramp[length - 1 - t] *= weight
    return ramp


@api.node(
    "LatentComposite",
    category="latent",
    display_name="Latent Composite",
    inputs=[
        api.Input("samples_to", api.LATENT),
        api.Input("samples_from", api.LATENT),
        api.Int("x", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("y", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("feather", 0, min=0, max=api.MAX_RESOLUTION, step=8),
    ],
    outputs=[api.LATENT],
)
def latent_composite(samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int):
    """Paste samples_from into samples_to at pixel (x, y); `feather` pixels blend the inner edges."""
    x, y, feather = x // 8, y // 8, feather // 8
    dest = samples_to["samples"].clone()
    h, w = dest.shape[2], dest.shape[3]
    if x >= w or y >= h:
        return (_copy(samples_to, dest),)
    src = samples_from["samples"][:, :, : h - y, : w - x].to(dest)
    src = repeat_to_batch(src, dest.shape[0])
    sh, sw = src.shape[2], src.shape[3]
    region = dest[:, :, y : y + sh, x : x + sw]
    if feather == 0:
        dest[:, :, y : y + sh, x : x + sw] = src
    else:
        # Only edges that lie inside the destination are feathered (an edge on the border stays hard).
        rows = _edge_ramp(sh, feather, y != 0, y + sh < h)
        cols = _edge_ramp(sw, feather, x != 0, x + sw < w)
        mask = (rows[:, None] * cols[None, :]).to(dest)
        dest[:, :, y : y + sh, x : x + sw] = src * mask + region * (1.0 - mask)
    return (_copy(samples_to, dest),)


@api.node(
    "LatentCompositeMasked",
    category="latent",
    inputs=composite_masked_inputs(api.LATENT, step=8),
    outputs=[api.LATENT],
)
def latent_composite_masked(
    destination: Latent,
    source: Latent,
    x: int,
    y: int,
    resize_source: bool,
    mask: torch.Tensor | None = None,
):
    out = composite_masked(destination["samples"], source["samples"], x, y, mask, 8, resize_source)
    return (_copy(destination, out),)


@api.node(
    "LatentBlend",
    category="_for_testing",
    display_name="Latent Blend",
    inputs=[
        api.Input("samples1", api.LATENT),
        api.Input("samples2", api.LATENT),
        api.Float("blend_factor", 0.5, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[api.LATENT],
)
def latent_blend(samples1: Latent, samples2: Latent, blend_factor: float):
    """samples1 * blend_factor + samples2 * (1 - blend_factor); samples2 is resized to samples1 first."""
    a = samples1["samples"]
    b = samples2["samples"].to(a)
    if a.shape[2:] != b.shape[2:]:
        b = common_upscale(b, a.shape[3], a.shape[2], "bicubic", "center")
    b = repeat_to_batch(b, a.shape[0])
    return (_copy(samples1, a * blend_factor + b * (1.0 - blend_factor)),)


@api.node(
    "LatentFromBatch",
    category="latent/batch",
    display_name="Latent From Batch",
    inputs=[
        api.Input("samples", api.LATENT),
        api.Int("batch_index", 0, min=0, max=63, step=None),
        api.Int("length", 1, min=1, max=64, step=None),
    ],
    outputs=[api.LATENT],
)
def latent_from_batch(samples: Latent, batch_index: int, length: int):
    """`length` latents starting at `batch_index` (clamped to the batch), with their noise masks and
    their original batch indices (so the sampler's per-image noise stays the same)."""
    s = samples["samples"]
    batch_index = min(s.shape[0] - 1, batch_index)
    length = min(s.shape[0] - batch_index, length)
    out = _copy(samples, s[batch_index : batch_index + length].clone())
    if "noise_mask" in samples:
        masks = samples["noise_mask"]
        if masks.shape[0] == 1:
            out["noise_mask"] = masks.clone()
        else:
            masks = repeat_to_batch(masks, s.shape[0])
            out["noise_mask"] = masks[batch_index : batch_index + length].clone()
    if "batch_index" in samples:
        out["batch_index"] = list(samples["batch_index"][batch_index : batch_index + length])
    else:
        out["batch_index"] = list(range(batch_index, batch_index + length))
    return (out,)


@api.node(
    "RepeatLatentBatch",
    category="latent/batch",
    display_name="Repeat Latent Batch",
    inputs=[api.Input("samples", api.LATENT), api.Int("amount", 1, min=1, max=64, step=None)],
    outputs=[api.LATENT],
)
def repeat_latent_batch(samples: Latent, amount: int):
    s = samples["samples"]
    out = _copy(samples, s.repeat((amount, 1, 1, 1)))
    if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
        masks = repeat_to_batch(samples["noise_mask"], s.shape[0])
        out["noise_mask"] = masks.repeat((amount, 1, 1, 1))
    if "batch_index" in samples:
        # Repeats get indices past the original range so each copy draws different noise.
        indices = list(samples["batch_index"])
        offset = max(indices) - min(indices) + 1
        out["batch_index"] = indices + [i + k * offset for k in range(1, amount) for i in indices]
    return (out,)


@api.node(
    "LatentBatch",
    category="latent/batch",
    inputs=[api.Input("samples1", api.LATENT), api.Input("samples2", api.LATENT)],
    outputs=[api.LATENT],
)
def latent_batch(samples1: Latent, samples2: Latent):
    """Both batches in one; samples2 is resized (bilinear, centre crop) to samples1's size if needed."""
    a = samples1["samples"]
    b = samples2["samples"].to(a)
    if a.shape[1:] != b.shape[1:]:
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"LatentBatch: samples1 has {a.shape[1]} channels but samples2 has {b.shape[1]}; "
                "latents from different model families cannot share a batch"
            )
        b = common_upscale(b, a.shape[3], a.shape[2], "bilinear", "center")
    out = _copy(samples1, torch.cat((a, b), dim=0))
    out.pop("noise_mask", None)
    first = samples1.get("batch_index", list(range(a.shape[0])))
    second = samples2.get("batch_index", list(range(b.shape[0])))
    out["batch_index"] = list(first) + list(second)
    return (out,)


ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]


@api.node(
    "LatentRotate",
    category="latent/transform",
    display_name="Rotate Latent",
    inputs=[api.Input("samples", api.LATENT), api.Combo("rotation", ROTATIONS)],
    outputs=[api.LATENT],
)
def latent_rotate(samples: Latent, rotation: str):
    """Rotate clockwise by the chosen angle."""
    quarter_turns = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}[rotation]
    # rot90 turns from the first named dim towards the second: width -> height is clockwise.
    return (_copy(samples, torch.rot90(samples["samples"], k=quarter_turns, dims=[3, 2])),)


FLIPS = ["x-axis: vertically", "y-axis: horizontally"]


@api.node(
    "LatentFlip",
    category="latent/transform",
    display_name="Flip Latent",
    inputs=[api.Input("samples", api.LATENT), api.Combo("flip_method", FLIPS)],
    outputs=[api.LATENT],
)
def latent_flip(samples: Latent, flip_method: str):
    dim = 2 if flip_method.startswith("x") else 3
    return (_copy(samples, torch.flip(samples["samples"], dims=[dim])),)


@api.node(
    "LatentCrop",
    category="latent/transform",
    display_name="Crop Latent",
    inputs=[
        api.Input("samples", api.LATENT),
        api.Int("width", 512, min=64, max=api.MAX_RESOLUTION, step=8),
        api.Int("height", 512, min=64, max=api.MAX_RESOLUTION, step=8),
        api.Int("x", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("y", 0, min=0, max=api.MAX_RESOLUTION, step=8),
    ],
    outputs=[api.LATENT],
)
def latent_crop(samples: Latent, width: int, height: int, x: int, y: int):
    """A width×height pixel window at (x, y); the origin is clamped to keep at least 8 latent cells."""
    s = samples["samples"]
    x, y = x // 8, y // 8
    x = max(0, min(x, s.shape[3] - 8))
    y = max(0, min(y, s.shape[2] - 8))
    return (_copy(samples, s[:, :, y : y + height // 8, x : x + width // 8]),)


@api.node(
    "SetLatentNoiseMask",
    category="latent/inpaint",
    display_name="Set Latent Noise Mask",
    inputs=[api.Input("samples", api.LATENT), api.Input("mask", api.MASK)],
    outputs=[api.LATENT],
)
def set_latent_noise_mask(samples: Latent, mask: torch.Tensor):
    """Limit sampling to the masked area: the sampler keeps the original latent where the mask is 0."""
    out = dict(samples)
    out["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    return (out,)


NODES = [
    empty_latent_image,
    latent_upscale,
    latent_upscale_by,
    latent_composite,
    latent_composite_masked,
    latent_blend,
    latent_from_batch,
    repeat_latent_batch,
    latent_batch,
    latent_rotate,
    latent_flip,
    latent_crop,
    set_latent_noise_mask,
]
