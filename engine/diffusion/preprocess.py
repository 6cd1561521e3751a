"""Control-image preprocessors implemented in plain torch (no OpenCV, no extra models).

Images are IMAGE tensors (B, H, W, C) float in 0..1; outputs are IMAGEs as well (3 equal channels), as
ComfyUI's preprocessor nodes return them.

- ``canny``: Canny (1986), "A Computational Approach to Edge Detection": Gaussian blur, Sobel gradients,
  non-maximum suppression along the quantised gradient direction, double threshold, hysteresis by
  iterated 8-neighbour dilation of strong edges through weak ones. Thresholds are on the gradient
  magnitude of the 0..1 luminance (ComfyUI's Canny node uses the same 0.01..0.99 range).
- ``threshold`` (scribble / line art binarisation), ``invert``, ``image_to_mask``.

Not provided here because they need trained networks: depth (MiDaS, ZoeDepth, Depth Anything), normal
maps, OpenPose / DWPose, HED / PiDiNet soft edges, line-art and anime line-art extractors, segmentation
(UniFormer, OneFormer), MLSD. Custom node packs (e.g. comfyui_controlnet_aux) bring those with their weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, 1, H, W) luminance."""
    if image.shape[-1] == 1:
        return image.permute(0, 3, 1, 2).float()
    rgb = image[..., :3].float()
    w = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device)
    return (rgb * w).sum(-1, keepdim=True).permute(0, 3, 1, 2)


def _gray_to_image(g: torch.Tensor) -> torch.Tensor:
    return g.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W), kernel radius ceil(3 sigma), replicate padding."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def canny_edges(
    image: torch.Tensor, low_threshold: float = 0.4, high_threshold: float = 0.8, sigma: float = 1.0
) -> torch.Tensor:
    """Binary Canny edge map (B, 1, H, W) in {0, 1} from an IMAGE."""
    if not 0 <= low_threshold <= high_threshold:
        raise ValueError(
            f"canny: need 0 <= low_threshold ({low_threshold}) <= high_threshold ({high_threshold})"
        )
    g = gaussian_blur(to_gray(image), sigma)
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=g.dtype, device=g.device)
    p = F.pad(g, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(p, sx.view(1, 1, 3, 3))
    gy = F.conv2d(p, sx.t().contiguous().view(1, 1, 3, 3))
    mag = torch.sqrt(gx * gx + gy * gy)
    # Quantise the gradient direction to 0/45/90/135 degrees; keep pixels that are maxima along it.
    ang = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    sector = (((ang + 22.5) // 45.0) % 4).long()
    mp = F.pad(mag, (1, 1, 1, 1))
    h, w = mag.shape[-2:]

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return mp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    # Direction (dy, dx) of the gradient per sector (image rows grow downwards, gy > 0 points down).
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1)]
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for s, (dy, dx) in enumerate(offsets):
        is_max = (mag >= shifted(dy, dx)) & (mag >= shifted(-dy, -dx))
        keep |= (sector == s) & is_max
    nms = mag * keep
    strong = nms >= high_threshold
    weak = nms >= low_threshold
    edges = strong
    # Hysteresis: grow strong edges through connected weak pixels until nothing changes.
    for _ in range(h * w):
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.float()


def canny(image: torch.Tensor, low_threshold: float = 0.4, high_threshold: float = 0.8) -> torch.Tensor:
    """IMAGE -> IMAGE of white edges on black."""
    return _gray_to_image(canny_edges(image, low_threshold, high_threshold))


def threshold(image: torch.Tensor, value: float = 0.5) -> torch.Tensor:
    """Binarise the luminance: 1 where >= value (scribble / line-art control images)."""
    return _gray_to_image((to_gray(image) >= value).float())


def invert(image: torch.Tensor) -> torch.Tensor:
    return 1.0 - image


def image_to_mask(image: torch.Tensor, channel: str = "red") -> torch.Tensor:
    """IMAGE (B, H, W, C) -> MASK (B, H, W) from one channel (red/green/blue/alpha) or the luminance."""
    names = {"red": 0, "green": 1, "blue": 2, "alpha": 3}
    if channel == "luminance":
        return to_gray(image)[:, 0]
    if channel not in names:
        raise ValueError(f"image_to_mask: channel must be one of {[*names, 'luminance']}, got {channel!r}")
    idx = names[channel]
    if idx >= image.shape[-1]:
        raise ValueError(f"image_to_mask: the image has {image.shape[-1]} channels, no {channel!r} channel")
    return image[..., idx].float()
