"""Mask nodes: conversions to and from images, solid masks, crop/grow/feather, compositing, thresholds.

A MASK is a float32 tensor (B, H, W) in 0..1 (DESIGN.md §1); 1 means "affected" (inpaint here).
Inputs of shape (H, W) or (B, 1, H, W) are accepted and returned as (B, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import api

from ._image_ops import as_mask, repeat_to_batch

IMAGE_CHANNELS = ["red", "green", "blue", "alpha"]


@api.node(
    "MaskToImage",
    category="mask",
    display_name="Convert Mask to Image",
    inputs=[api.Input("mask", api.MASK)],
    outputs=[api.IMAGE],
)
def mask_to_image(mask: torch.Tensor):
    """A grey RGB image per mask (the mask value in all three channels)."""
    return (as_mask(mask).unsqueeze(-1).expand(-1, -1, -1, 3).clone(),)


@api.node(
    "ImageToMask",
    category="mask",
    display_name="Convert Image to Mask",
    inputs=[api.Input("image", api.IMAGE), api.Combo("channel", IMAGE_CHANNELS)],
    outputs=[api.MASK],
)
def image_to_mask(image: torch.Tensor, channel: str):
    index = IMAGE_CHANNELS.index(channel)
    if index >= image.shape[-1]:
        raise ValueError(
            f"ImageToMask: the image has {image.shape[-1]} channels, so it has no {channel} channel; "
            "pick red, green or blue, or load the image with its alpha channel"
        )
    return (image[..., index].clone(),)


@api.node(
    "ImageColorToMask",
    category="mask",
    inputs=[api.Input("image", api.IMAGE), api.Int("color", 0, min=0, max=0xFFFFFF, step=1, display="color")],
    outputs=[api.MASK],
)
def image_color_to_mask(image: torch.Tensor, color: int):
    """1 where the pixel's 8-bit RGB equals `color` (0xRRGGBB) exactly, else 0."""
    rgb = (torch.clamp(image[..., :3], 0, 1) * 255).round().to(torch.int64)
    packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    return ((packed == color).float(),)


@api.node(
    "SolidMask",
    category="mask",
    inputs=[
        api.Float("value", 1.0, min=0.0, max=1.0, step=0.01),
        api.Int("width", 512, min=1, max=api.MAX_RESOLUTION, step=1),
        api.Int("height", 512, min=1, max=api.MAX_RESOLUTION, step=1),
    ],
    outputs=[api.MASK],
)
def solid_mask(value: float, width: int, height: int):
    return (torch.full((1, height, width), value, dtype=torch.float32),)


@api.node(
    "InvertMask",
    category="mask",
    inputs=[api.Input("mask", api.MASK)],
    outputs=[api.MASK],
)
def invert_mask(mask: torch.Tensor):
    return (1.0 - mask,)


@api.node(
    "CropMask",
    category="mask",
    inputs=[
        api.Input("mask", api.MASK),
        api.Int("x", 0, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Int("y", 0, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Int("width", 512, min=1, max=api.MAX_RESOLUTION, step=1),
        api.Int("height", 512, min=1, max=api.MAX_RESOLUTION, step=1),
    ],
    outputs=[api.MASK],
)
def crop_mask(mask: torch.Tensor, x: int, y: int, width: int, height: int):
    return (as_mask(mask)[:, y : y + height, x : x + width].clone(),)


MASK_OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


@api.node(
    "MaskComposite",
    category="mask",
    inputs=[
        api.Input("destination", api.MASK),
        api.Input("source", api.MASK),
        api.Int("x", 0, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Int("y", 0, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Combo("operation", MASK_OPERATIONS),
    ],
    outputs=[api.MASK],
)
def mask_composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str):
    """Combine `source` into the destination region starting at (x, y); the rest is unchanged.
    Logical operations treat values ≥ 0.5 as set. Results are clamped to 0..1."""
    dest = as_mask(destination).clone()
    src = as_mask(source).to(dest)
    batch = max(dest.shape[0], src.shape[0])
    dest = repeat_to_batch(dest, batch).clone()
    src = repeat_to_batch(src, batch)
    right = min(x + src.shape[-1], dest.shape[-1])
    bottom = min(y + src.shape[-2], dest.shape[-2])
    if right <= x or bottom <= y:
        return (dest,)
    src = src[:, : bottom - y, : right - x]
    region = dest[:, y:bottom, x:right]
    if operation == "multiply":
        combined = region * src
    elif operation == "add":
        combined = region + src
    elif operation == "subtract":
        combined = region - src
    elif operation in ("and", "or", "xor"):
        a, b = region.round().bool(), src.round().bool()
        logic = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[operation]
        combined = logic(a, b).float()
    else:
        raise ValueError(f"unknown operation {operation!r}; choose one of {', '.join(MASK_OPERATIONS)}")
    dest[:, y:bottom, x:right] = combined
    return (torch.clamp(dest, 0.0, 1.0),)


@api.node(
    "FeatherMask",
    category="mask",
    inputs=[
        api.Input("mask", api.MASK),
        api.Int("left", 0, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Int("top", 0, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Int("right", 0, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Int("bottom", 0, min=0, max=api.MAX_RESOLUTION, step=1),
    ],
    outputs=[api.MASK],
)
def feather_mask(mask: torch.Tensor, left: int, top: int, right: int, bottom: int):
    """Fade the mask linearly to the image edges: the outermost pixel is multiplied by 1/n, the n-th by
    n/n, over n = left/top/right/bottom pixels on each side."""
    out = as_mask(mask).clone()
    height, width = out.shape[-2], out.shape[-1]
    left, right = min(left, width), min(right, width)
    top, bottom = min(top, height), min(bottom, height)
    for i in range(left):
        out[:, :, i] *= (i + 1.0) / left
    for i in range(right):
        out[:, :, -i - 1] *= (i + 1.0) / right
    for i in range(top):
        out[:, i, :] *= (i + 1.0) / top
    for i in range(bottom):
        out[:, -i - 1, :] *= (i + 1.0) / bottom
    return (out,)


@api.node(
    "GrowMask",
    category="mask",
    inputs=[
        api.Input("mask", api.MASK),
        api.Int("expand", 0, min=-api.MAX_RESOLUTION, max=api.MAX_RESOLUTION, step=1),
        api.Boolean("tapered_corners", True),
    ],
    outputs=[api.MASK],
)
def grow_mask(mask: torch.Tensor, expand: int, tapered_corners: bool):
    """Grey dilation (expand > 0) or erosion (expand < 0), one pixel per step, with a 3×3 cross
    (tapered corners) or square footprint; edges behave as if the border pixels repeat."""
    out = as_mask(mask).unsqueeze(1).float()
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    if tapered_corners:
        offsets = [(dy, dx) for dy, dx in offsets if dy == 0 or dx == 0]
    height, width = out.shape[-2], out.shape[-1]
    for _ in range(abs(expand)):
        padded = F.pad(out, (1, 1, 1, 1), mode="replicate")
        shifted = torch.stack(
            [padded[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy, dx in offsets]
        )
        out = shifted.amax(dim=0) if expand > 0 else shifted.amin(dim=0)
    return (out.squeeze(1),)


@api.node(
    "ThresholdMask",
    category="mask",
    inputs=[api.Input("mask", api.MASK), api.Float("value", 0.5, min=0.0, max=1.0, step=0.01)],
    outputs=[api.MASK],
)
def threshold_mask(mask: torch.Tensor, value: float):
    """1 where the mask is strictly above `value`, else 0."""
    return ((mask > value).float(),)


NODES = [
    mask_to_image,
    image_to_mask,
    image_color_to_mask,
    solid_mask,
    invert_mask,
    crop_mask,
    mask_composite,
    feather_mask,
    grow_mask,
    threshold_mask,
]
