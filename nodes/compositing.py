"""Alpha compositing (ComfyUI's mask/compositing family): splitting and joining an alpha channel, and
the Porter-Duff operators.

ComfyUI passes alpha on MASK sockets inverted: a mask value is 1 - alpha (1 = transparent, as LoadImage's
mask). These nodes keep that convention on their inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine import api

from ._image_ops import common_upscale

CATEGORY = "mask/compositing"
Pair = tuple[torch.Tensor, torch.Tensor]
Blend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], Pair]


def _overlay(s: torch.Tensor, sa: torch.Tensor, d: torch.Tensor, da: torch.Tensor) -> Pair:
    colour = torch.where(2 * d < da, 2 * s * d, sa * da - 2 * (da - s) * (sa - d))
    return sa + da - sa * da, colour


# Each operator maps premultiplied colours s, d and alphas sa, da to (alpha, premultiplied colour). The
# formulas are ComfyUI's (Porter & Duff 1984 for the classic ones; DARKEN/LIGHTEN there add min/max of
# the premultiplied colours rather than of Sca·Da and Dca·Sa).
PORTER_DUFF: dict[str, Blend] = {
    "ADD": lambda s, sa, d, da: (torch.clamp(sa + da, 0, 1), torch.clamp(s + d, 0, 1)),
    "CLEAR": lambda s, sa, d, da: (torch.zeros_like(da), torch.zeros_like(d)),
    "DARKEN": lambda s, sa, d, da: (sa + da - sa * da, (1 - da) * s + (1 - sa) * d + torch.minimum(s, d)),
    "DST": lambda s, sa, d, da: (da, d),
    "DST_ATOP": lambda s, sa, d, da: (sa, sa * d + (1 - da) * s),
    "DST_IN": lambda s, sa, d, da: (sa * da, d * sa),
    "DST_OUT": lambda s, sa, d, da: ((1 - sa) * da, (1 - sa) * d),
    "DST_OVER": lambda s, sa, d, da: (da + (1 - da) * sa, d + (1 - da) * s),
    "LIGHTEN": lambda s, sa, d, da: (sa + da - sa * da, (1 - da) * s + (1 - sa) * d + torch.maximum(s, d)),
    "MULTIPLY": lambda s, sa, d, da: (sa * da, s * d),
    "OVERLAY": _overlay,
    "SCREEN": lambda s, sa, d, da: (sa + da - sa * da, s + d - s * d),
    "SRC": lambda s, sa, d, da: (sa, s),
    "SRC_ATOP": lambda s, sa, d, da: (da, da * s + (1 - sa) * d),
    "SRC_IN": lambda s, sa, d, da: (sa * da, s * da),
    "SRC_OUT": lambda s, sa, d, da: ((1 - da) * sa, (1 - da) * s),
    "SRC_OVER": lambda s, sa, d, da: (sa + (1 - sa) * da, s + (1 - sa) * d),
    "XOR": lambda s, sa, d, da: ((1 - da) * sa + (1 - sa) * da, (1 - da) * s + (1 - sa) * d),
}


def porter_duff(
    source: torch.Tensor, source_mask: torch.Tensor, dest: torch.Tensor, dest_mask: torch.Tensor, mode: str
) -> Pair:
    """Composite straight-alpha colours (…, C) with masks (…, 1) (mask = 1 - alpha); returns the
    straight colour (clamped to 0..1, 0 where the result is transparent) and the result's mask."""
    sa, da = 1 - source_mask, 1 - dest_mask
    alpha, colour = PORTER_DUFF[mode](source * sa, sa, dest * da, da)
    straight = torch.where(alpha > 1e-5, colour / alpha, torch.zeros_like(colour))
    return torch.clamp(straight, 0, 1), 1 - alpha


def _fit(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One (H, W, C) image resized to height × width (bicubic, centre crop to the aspect ratio)."""
    if image.shape[:2] == (height, width):
        return image
    resized = common_upscale(image.movedim(-1, 0).unsqueeze(0), width, height, "bicubic", "center")
    return resized.squeeze(0).movedim(0, -1)


@api.node(
    "PorterDuffImageComposite",
    category=CATEGORY,
    display_name="Porter-Duff Image Composite",
    inputs=[
        api.Input("source", api.IMAGE),
        api.Input("source_alpha", api.MASK),
        api.Input("destination", api.IMAGE),
        api.Input("destination_alpha", api.MASK),
        api.Combo("mode", list(PORTER_DUFF), default="DST"),
    ],
    outputs=[api.IMAGE, api.MASK],
)
def porter_duff_image_composite(
    source: torch.Tensor,
    source_alpha: torch.Tensor,
    destination: torch.Tensor,
    destination_alpha: torch.Tensor,
    mode: str,
):
    """Composite source over/in/out/... destination per image of the shortest batch; the source and the
    masks are resized to the destination's size first (bicubic)."""
    count = min(len(source), len(source_alpha), len(destination), len(destination_alpha))
    images, masks = [], []
    for i in range(count):
        dest = destination[i]
        if source[i].shape[-1] != dest.shape[-1]:
            raise ValueError(
                f"source and destination need the same number of channels, got {source[i].shape[-1]} "
                f"and {dest.shape[-1]}"
            )
        height, width = dest.shape[0], dest.shape[1]
        dest_mask = _fit(destination_alpha[i].unsqueeze(-1), height, width)
        src = _fit(source[i].to(dest), height, width)
        src_mask = _fit(source_alpha[i].unsqueeze(-1), dest_mask.shape[0], dest_mask.shape[1])
        image, mask = porter_duff(src, src_mask, dest, dest_mask, mode)
        images.append(image)
        masks.append(mask.squeeze(-1))
    return (torch.stack(images), torch.stack(masks))


@api.node(
    "SplitImageWithAlpha",
    category=CATEGORY,
    display_name="Split Image with Alpha",
    inputs=[api.Input("image", api.IMAGE)],
    outputs=[api.IMAGE, api.MASK],
)
def split_image_with_alpha(image: torch.Tensor):
    """The RGB channels, and the mask 1 - alpha (zeros for an image without alpha)."""
    alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
    return (image[..., :3].clone(), 1.0 - alpha)


@api.node(
    "JoinImageWithAlpha",
    category=CATEGORY,
    display_name="Join Image with Alpha",
    inputs=[api.Input("image", api.IMAGE), api.Input("alpha", api.MASK)],
    outputs=[api.IMAGE],
)
def join_image_with_alpha(image: torch.Tensor, alpha: torch.Tensor):
    """RGBA: the image's RGB plus alpha = 1 - mask, the mask resized (bilinear) to the image; the batch
    is the shorter of the two."""
    height, width = image.shape[1], image.shape[2]
    mask = alpha.reshape(-1, 1, alpha.shape[-2], alpha.shape[-1]).to(image)
    mask = F.interpolate(mask, size=(height, width), mode="bilinear").squeeze(1)
    count = min(len(image), len(mask))
    return (torch.cat([image[:count, ..., :3], (1.0 - mask[:count]).unsqueeze(-1)], dim=-1),)


NODES = [porter_duff_image_composite, split_image_with_alpha, join_image_with_alpha]
