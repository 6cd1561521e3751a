"""VAE nodes: VAEEncode, VAEDecode, their tiled variants, VAEEncodeForInpaint, InpaintModelConditioning.

IMAGE is (B, H, W, C) float in 0..1, MASK (B, H, W) in 0..1, LATENT {"samples": (B, 4, H/f, W/f), ...}
(DESIGN.md §1); f is the VAE's downscale factor (8 for real SD VAEs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine import api
from engine.api.models import require_vae

from ._image_ops import checked_mask


def _image(pixels: Any, name: str = "pixels") -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise ValueError(
            f"{name} must be an IMAGE (batch, height, width, channels), got {getattr(pixels, 'shape', pixels)}"
        )
    return pixels


def _mask_like(mask: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The mask resized (bilinear) to the image's height and width: (B, H, W)."""
    h, w = pixels.shape[1], pixels.shape[2]
    if tuple(mask.shape[-2:]) == (h, w):
        return mask
    return F.interpolate(mask.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)


@api.node(
    "VAEDecode",
    category="latent",
    inputs=[api.Input("samples", api.LATENT), api.Input("vae", api.VAE)],
    outputs=[api.IMAGE],
)
def vae_decode(samples: Any, vae: Any):
    """Latent -> image (0..1); falls back to tiled decoding when memory runs out."""
    return (require_vae(vae).decode(samples["samples"]),)


@api.node(
    "VAEEncode",
    category="latent",
    inputs=[api.Input("pixels", api.IMAGE), api.Input("vae", api.VAE)],
    outputs=[api.LATENT],
)
def vae_encode(pixels: Any, vae: Any):
    """Image -> latent; the image is cropped to a multiple of the VAE's cell size first."""
    return ({"samples": require_vae(vae).encode(_image(pixels))},)


def _tile_inputs(tile_step: int = 32) -> list[api.Input]:
    """The tiling widgets; ComfyUI's encoder steps tile_size by 64, its decoder by 32."""
    return [
        api.Int("tile_size", 512, min=64, max=4096, step=tile_step),
        api.Int("overlap", 64, min=0, max=4096, step=32),
        # Video VAEs only (ComfyUI): accepted so workflows load unchanged, unused for images.
        api.Int("temporal_size", 64, min=8, max=4096, step=4),
        api.Int("temporal_overlap", 8, min=4, max=4096, step=4),
    ]


def _check_tiles(tile_size: int, overlap: int) -> int:
    # ComfyUI clamps the overlap to a quarter of the tile so that tiles still advance.
    return min(overlap, tile_size // 4)


@api.node(
    "VAEDecodeTiled",
    category="_for_testing",
    display_name="VAE Decode (Tiled)",
    inputs=[api.Input("samples", api.LATENT), api.Input("vae", api.VAE), *_tile_inputs()],
    outputs=[api.IMAGE],
)
def vae_decode_tiled(
    samples: Any, vae: Any, tile_size: int, overlap: int, temporal_size: int = 64, temporal_overlap: int = 8
):
    """Decode in overlapping tiles of tile_size pixels (less memory for large images)."""
    return (
        require_vae(vae).decode(
            samples["samples"], tile_size=tile_size, overlap=_check_tiles(tile_size, overlap)
        ),
    )


@api.node(
    "VAEEncodeTiled",
    category="_for_testing",
    display_name="VAE Encode (Tiled)",
    inputs=[api.Input("pixels", api.IMAGE), api.Input("vae", api.VAE), *_tile_inputs(64)],
    outputs=[api.LATENT],
)
def vae_encode_tiled(
    pixels: Any, vae: Any, tile_size: int, overlap: int, temporal_size: int = 64, temporal_overlap: int = 8
):
    """Encode in overlapping tiles of tile_size pixels."""
    v = require_vae(vae)
    image = v.crop_to_multiple(_image(pixels))
    f = v.downscale
    tile = max(f, (tile_size // f) * f)
    over = (_check_tiles(tile, overlap) // f) * f
    return ({"samples": v.encode(image, tile_size=tile, overlap=over)},)


def _grow(mask: torch.Tensor, grow: int) -> torch.Tensor:
    """Dilate a (B, H, W) mask with a grow x grow box (ComfyUI's VAEEncodeForInpaint convolves the rounded
    mask with a box of ones of that size, padded by ceil((grow - 1) / 2), and clamps to 0..1)."""
    if grow <= 0:
        return mask
    pad = (grow - 1 + 1) // 2
    h, w = mask.shape[-2:]
    out = F.max_pool2d(mask.unsqueeze(1), kernel_size=grow, stride=1, padding=pad).squeeze(1)
    return out[:, :h, :w]


@api.node(
    "VAEEncodeForInpaint",
    category="latent/inpaint",
    display_name="VAE Encode (for Inpainting)",
    inputs=[
        api.Input("pixels", api.IMAGE),
        api.Input("vae", api.VAE),
        api.Input("mask", api.MASK),
        api.Int("grow_mask_by", 6, min=0, max=64, step=1),
    ],
    outputs=[api.LATENT],
)
def vae_encode_for_inpaint(pixels: Any, vae: Any, mask: Any, grow_mask_by: int):
    """Encode the image with the masked pixels set to mid-grey and attach the (grown) mask as the
    latent's noise_mask, for inpainting models (denoise 1.0 repaints the masked region from scratch)."""
    v = require_vae(vae)
    image = _image(pixels)
    m = _mask_like(checked_mask(mask), image).clamp(0.0, 1.0)
    image = v.crop_to_multiple(image)
    if tuple(m.shape[-2:]) != tuple(image.shape[1:3]):
        # cropped like the image: centre crop
        dh, dw = m.shape[-2] - image.shape[1], m.shape[-1] - image.shape[2]
        m = m[:, dh // 2 : dh // 2 + image.shape[1], dw // 2 : dw // 2 + image.shape[2]]
    grown = _grow(m, grow_mask_by).round()
    keep = (1.0 - m.round()).unsqueeze(-1)
    if grown.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"mask batch {grown.shape[0]} does not match the image batch {image.shape[0]}")
    rgb = image[..., :3]
    rgb = (rgb - 0.5) * keep + 0.5
    samples = v.encode(rgb)
    return ({"samples": samples, "noise_mask": grown.reshape(-1, 1, *grown.shape[-2:])},)


@api.node(
    "InpaintModelConditioning",
    category="conditioning/inpaint",
    inputs=[
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("vae", api.VAE),
        api.Input("pixels", api.IMAGE),
        api.Input("mask", api.MASK),
        api.Boolean(
            "noise_mask", True, tooltip="Add a noise mask to the latent so sampling only repaints the mask."
        ),
    ],
    outputs=[
        api.Output(api.CONDITIONING, "positive"),
        api.Output(api.CONDITIONING, "negative"),
        api.Output(api.LATENT, "latent"),
    ],
)
def inpaint_model_conditioning(
    positive: Any, negative: Any, vae: Any, pixels: Any, mask: Any, noise_mask: bool
):
    """For inpainting models: the latent of the image, plus conditionings carrying the mask and the
    latent of the image with the masked pixels greyed out (`concat_mask` / `concat_latent_image`)."""
    v = require_vae(vae)
    image = v.crop_to_multiple(_image(pixels))
    m = _mask_like(checked_mask(mask), image).clamp(0.0, 1.0)
    keep = (1.0 - m.round()).unsqueeze(-1)
    greyed = (image[..., :3] - 0.5) * keep + 0.5
    concat_latent = v.encode(greyed)
    original = v.encode(image)
    mask4 = m.reshape(-1, 1, *m.shape[-2:])
    out_latent: dict[str, Any] = {"samples": original}
    if noise_mask:
        out_latent["noise_mask"] = mask4

    def attach(conditioning: Any) -> list[list[Any]]:
        return [
            [c[0], {**c[1], "concat_latent_image": concat_latent, "concat_mask": mask4}] for c in conditioning
        ]

    return (attach(positive), attach(negative), out_latent)


NODES = [
    vae_decode,
    vae_encode,
    vae_decode_tiled,
    vae_encode_tiled,
    vae_encode_for_inpaint,
    inpaint_model_conditioning,
]
