"""Image transform nodes: scaling, cropping, padding for outpainting, blending, blur/sharpen, batches.

An IMAGE is a float32 tensor (B, H, W, C) in 0..1 (DESIGN.md §1). Nodes return new tensors and never
modify their inputs (outputs are cached and shared between nodes).
"""

from __future__ import annotations

import math

import torch

from engine import api

from ._image_ops import (
    CROP_METHODS,
    UPSCALE_METHODS_IMAGE,
    common_upscale,
    composite_masked,
    composite_masked_inputs,
    filter2d,
    gaussian_kernel,
    rgb_from_int,
)


def _resize(image: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


@api.node(
    "ImageScale",
    category="image/upscaling",
    display_name="Upscale Image",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Combo("upscale_method", UPSCALE_METHODS_IMAGE),
        api.Int("width", 512, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Int("height", 512, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Combo("crop", CROP_METHODS),
    ],
    outputs=[api.IMAGE],
)
def image_scale(image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str):
    """Resize to width×height; a 0 keeps the aspect ratio from the other side; 0 and 0 is a no-op."""
    if width == 0 and height == 0:
        return (image,)
    if width == 0:
        width = max(1, round(image.shape[2] * height / image.shape[1]))
    elif height == 0:
        height = max(1, round(image.shape[1] * width / image.shape[2]))
    return (_resize(image, width, height, upscale_method, crop),)


@api.node(
    "ImageScaleBy",
    category="image/upscaling",
    display_name="Upscale Image By",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Combo("upscale_method", UPSCALE_METHODS_IMAGE),
        api.Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01),
    ],
    outputs=[api.IMAGE],
)
def image_scale_by(image: torch.Tensor, upscale_method: str, scale_by: float):
    width = max(1, round(image.shape[2] * scale_by))
    height = max(1, round(image.shape[1] * scale_by))
    return (_resize(image, width, height, upscale_method, "disabled"),)


@api.node(
    "ImageScaleToTotalPixels",
    category="image/upscaling",
    display_name="Scale Image to Total Pixels",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Combo("upscale_method", UPSCALE_METHODS_IMAGE),
        api.Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01),
        # Newer ComfyUI (after 0.3.64) adds this input; optional here, so workflows with and without it load.
        api.Int("resolution_steps", 1, min=1, max=256, step=None, optional=True),
    ],
    outputs=[api.IMAGE],
)
def image_scale_to_total_pixels(
    image: torch.Tensor, upscale_method: str, megapixels: float, resolution_steps: int = 1
):
    """Resize keeping the aspect ratio so width×height ≈ megapixels × 1024²; sides are rounded to a
    multiple of resolution_steps."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (image.shape[1] * image.shape[2]))
    width = max(resolution_steps, round(image.shape[2] * scale / resolution_steps) * resolution_steps)
    height = max(resolution_steps, round(image.shape[1] * scale / resolution_steps) * resolution_steps)
    return (_resize(image, int(width), int(height), upscale_method, "disabled"),)


@api.node(
    "ImageInvert",
    category="image",
    display_name="Invert Image",
    inputs=[api.Input("image", api.IMAGE)],
    outputs=[api.IMAGE],
)
def image_invert(image: torch.Tensor):
    return (1.0 - image,)


@api.node(
    "ImageBatch",
    category="image",
    display_name="Batch Images",
    inputs=[api.Input("image1", api.IMAGE), api.Input("image2", api.IMAGE)],
    outputs=[api.IMAGE],
)
def image_batch(image1: torch.Tensor, image2: torch.Tensor):
    """image1's frames then image2's; image2 is resized (bilinear, centre crop) to image1's size."""
    if image1.shape[-1] != image2.shape[-1]:
        raise ValueError(
            f"ImageBatch: image1 has {image1.shape[-1]} channels but image2 has {image2.shape[-1]}; "
            "convert both to RGB (or both RGBA) first"
        )
    if image1.shape[1:] != image2.shape[1:]:
        image2 = _resize(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
    return (torch.cat((image1, image2.to(image1)), dim=0),)


@api.node(
    "ImagePadForOutpaint",
    category="image",
    display_name="Pad Image for Outpainting",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Int("left", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("top", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("right", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("bottom", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("feathering", 40, min=0, max=api.MAX_RESOLUTION, step=1),
    ],
    outputs=[api.IMAGE, api.MASK],
)
def image_pad_for_outpaint(
    image: torch.Tensor, left: int, top: int, right: int, bottom: int, feathering: int
):
    """Grow the canvas with grey (0.5) borders; the mask is 1 on the new border and, with feathering,
    ramps quadratically from 1 at a padded edge to 0 `feathering` pixels inside the original image."""
    batch, height, width, channels = image.shape
    new_h, new_w = height + top + bottom, width + left + right
    padded = torch.full((batch, new_h, new_w, channels), 0.5, dtype=image.dtype, device=image.device)
    padded[:, top : top + height, left : left + width, :] = image
    mask = torch.ones((new_h, new_w), dtype=torch.float32, device=image.device)
    inner = torch.zeros((height, width), dtype=torch.float32, device=image.device)
    if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
        # Distance to the nearest edge that was padded (unpadded edges do not count).
        rows = torch.arange(height, dtype=torch.float32, device=image.device)[:, None].expand(height, width)
        cols = torch.arange(width, dtype=torch.float32, device=image.device)[None, :].expand(height, width)
        far_h = torch.full_like(rows, float(height))
        far_w = torch.full_like(cols, float(width))
        distance = torch.stack(
            [
                rows if top else far_h,
                height - rows if bottom else far_h,
                cols if left else far_w,
                width - cols if right else far_w,
            ]
        ).amin(dim=0)
        ramp = (feathering - distance) / feathering
        inner = torch.where(distance < feathering, ramp * ramp, inner)
    mask[top : top + height, left : left + width] = inner
    return (padded, mask.unsqueeze(0))


@api.node(
    "ImageCrop",
    category="image/transform",
    display_name="Image Crop",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Int("width", 512, min=1, max=api.MAX_RESOLUTION, step=1),
        api.Int("height", 512, min=1, max=api.MAX_RESOLUTION, step=1),
        api.Int("x", 0, min=0, max=api.MAX_RESOLUTION, step=1),
        api.Int("y", 0, min=0, max=api.MAX_RESOLUTION, step=1),
    ],
    outputs=[api.IMAGE],
)
def image_crop(image: torch.Tensor, width: int, height: int, x: int, y: int):
    """The width×height window at (x, y), cut at the image border; the origin stays inside the image."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return (image[:, y : y + height, x : x + width, :],)


BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


def _blend(base: torch.Tensor, top: torch.Tensor, mode: str) -> torch.Tensor:
    # Formulas: the W3C Compositing and Blending Level 1 spec (soft-light with its D(x) helper);
    # "difference" is the signed a - b as ComfyUI uses (clamped by the caller).
    if mode == "normal":
        return top
    if mode == "multiply":
        return base * top
    if mode == "screen":
        return 1 - (1 - base) * (1 - top)
    if mode == "overlay":
        return torch.where(base <= 0.5, 2 * base * top, 1 - 2 * (1 - base) * (1 - top))
    if mode == "soft_light":
        d = torch.where(base <= 0.25, ((16 * base - 12) * base + 4) * base, torch.sqrt(base))
        return torch.where(
            top <= 0.5, base - (1 - 2 * top) * base * (1 - base), base + (2 * top - 1) * (d - base)
        )
    if mode == "difference":
        return base - top
    raise ValueError(f"unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODES)}")


@api.node(
    "ImageBlend",
    category="image/postprocessing",
    display_name="Image Blend",
    inputs=[
        api.Input("image1", api.IMAGE),
        api.Input("image2", api.IMAGE),
        api.Float("blend_factor", 0.5, min=0.0, max=1.0, step=0.01),
        api.Combo("blend_mode", BLEND_MODES),
    ],
    outputs=[api.IMAGE],
)
def image_blend(image1: torch.Tensor, image2: torch.Tensor, blend_factor: float, blend_mode: str):
    """image1 mixed with blend(image1, image2) by blend_factor; image2 is resized to image1 first."""
    image2 = image2.to(image1)
    if image1.shape[1:] != image2.shape[1:]:
        image2 = _resize(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
    blended = _blend(image1, image2, blend_mode)
    return (torch.clamp(image1 * (1 - blend_factor) + blended * blend_factor, 0, 1),)


@api.node(
    "ImageBlur",
    category="image/postprocessing",
    display_name="Image Blur",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Int("blur_radius", 1, min=1, max=31, step=1),
        api.Float("sigma", 1.0, min=0.1, max=10.0, step=0.1),
    ],
    outputs=[api.IMAGE],
)
def image_blur(image: torch.Tensor, blur_radius: int, sigma: float):
    if blur_radius == 0:
        return (image,)
    kernel = gaussian_kernel(blur_radius * 2 + 1, sigma, device=image.device)
    return (filter2d(image, kernel),)


@api.node(
    "ImageSharpen",
    category="image/postprocessing",
    display_name="Image Sharpen",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Int("sharpen_radius", 1, min=1, max=31, step=1),
        api.Float("sigma", 1.0, min=0.1, max=10.0, step=0.01),
        api.Float("alpha", 1.0, min=0.0, max=5.0, step=0.01),
    ],
    outputs=[api.IMAGE],
)
def image_sharpen(image: torch.Tensor, sharpen_radius: int, sigma: float, alpha: float):
    """Unsharp-style sharpening: a negated, scaled Gaussian with the centre raised so the kernel sums to 1
    (flat areas are unchanged), clamped to 0..1."""
    if sharpen_radius == 0:
        return (image,)
    size = sharpen_radius * 2 + 1
    kernel = gaussian_kernel(size, sigma, device=image.device) * -(alpha * 10)
    centre = size // 2
    kernel[centre, centre] = kernel[centre, centre] - kernel.sum() + 1.0
    return (torch.clamp(filter2d(image, kernel), 0, 1),)


@api.node(
    "EmptyImage",
    category="image",
    inputs=[
        api.Int("width", 512, min=1, max=api.MAX_RESOLUTION, step=1),
        api.Int("height", 512, min=1, max=api.MAX_RESOLUTION, step=1),
        api.Int("batch_size", 1, min=1, max=4096, step=None),
        api.Int("color", 0, min=0, max=0xFFFFFF, step=1, display="color"),
    ],
    outputs=[api.IMAGE],
)
def empty_image(width: int, height: int, batch_size: int = 1, color: int = 0):
    """A batch of images filled with one colour (0xRRGGBB)."""
    rgb = torch.tensor(rgb_from_int(color), dtype=torch.float32)
    return (rgb.expand(batch_size, height, width, 3).clone(),)


@api.node(
    "ImageCompositeMasked",
    category="image",
    inputs=composite_masked_inputs(api.IMAGE, step=1),
    outputs=[api.IMAGE],
)
def image_composite_masked(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    resize_source: bool,
    mask: torch.Tensor | None = None,
):
    """Paste `source` onto `destination` at pixel (x, y), weighted by `mask` (stretched to the source)."""
    if destination.shape[-1] != source.shape[-1]:
        raise ValueError(
            f"ImageCompositeMasked: destination has {destination.shape[-1]} channels but source has "
            f"{source.shape[-1]}; both images must be RGB (or both RGBA)"
        )
    out = composite_masked(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
    return (out.movedim(1, -1),)


NODES = [
    image_composite_masked,
    image_scale,
    image_scale_by,
    image_scale_to_total_pixels,
    image_invert,
    image_batch,
    image_pad_for_outpaint,
    image_crop,
    image_blend,
    image_blur,
    image_sharpen,
    empty_image,
]
