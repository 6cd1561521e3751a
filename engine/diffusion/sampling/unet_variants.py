"""The extra UNet inputs of the concat-channel variants other than inpainting (see
``engine/diffusion/checkpoints/detect_variant.py`` for how they are detected).

Each variant builds, per CONDITIONING entry, the channels concatenated after the noisy latent
(``c_concat``) and, for the x4 upscaler, the class label ``y``; `DiffusionModel` asks it through
``concat_cond`` / ``encode_adm``. The conditioning keys are ComfyUI's:

- InstructPix2Pix (ComfyUI's ``IP2P.concat_cond``): "concat_latent_image" (InstructPixToPixConditioning),
  the raw VAE latent of the input image, *not* scaled into the model's space (the original IP2P trains on
  the unscaled first-stage mode); zeros without one.
- SD x4 upscaler (ComfyUI's ``SD_X4Upscaler.extra_conds``): "concat_image" (SD_4XUpscale_Conditioning), the
  low-resolution image in -1..1, resized to the latent; "noise_augmentation" a in 0..1 gives the noise
  level round(350 a), fed as the class label, and the image is noised to that level of the x4 model's
  low-scale schedule (linear betas 1e-4..2e-2: x = sqrt(ab) x + sqrt(1 - ab) n, n drawn on the CPU from
  the sampler's seed - 10, as ComfyUI does).
- SD 2 depth (no ComfyUI support; the original LDM ``LatentDepth2ImageDiffusion``): "concat_depth", a
  depth map (B, H, W) or an IMAGE (B, H, W, C), resized (bicubic) to the latent and normalised per image
  to -1..1; zeros without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .diffusion_model import _to_batch
from .model_sampling import ModelSampling, ModelSamplingDiscrete

# The x4 upscaler's low-scale noise augmentation (x4-upscaling.yaml: max_noise_level 350, linear 1e-4..2e-2).
X4_MAX_NOISE_LEVEL = 350
_X4_BETAS = (1e-4, 2e-2)
# ComfyUI draws the augmentation noise from the sampler's seed - 10 (the entry's "seed", which
# DiffusionModel adds when the sampler set one); without a seed a fixed one keeps results reproducible.
_X4_SEED_OFFSET = -10
_X4_NOISE_SEED = 0


def _resize(t: torch.Tensor, h: int, w: int, mode: str = "bilinear") -> torch.Tensor:
    if tuple(t.shape[-2:]) == (h, w):
        return t
    return F.interpolate(t, size=(h, w), mode=mode, align_corners=False)


class ConcatVariant:
    """Base: no extra channels, no label. ``name`` is the detect_variant name."""

    name = ""

    def concat(
        self,
        like: torch.Tensor,
        *,
        latent_image: torch.Tensor | None,
        denoise_mask: torch.Tensor | None,
        cond: Mapping[str, Any],
    ) -> torch.Tensor | None:
        return None

    def adm(self, cond: Mapping[str, Any]) -> torch.Tensor | None:
        return None


class InstructPix2Pix(ConcatVariant):
    name = "ip2p"

    def concat(self, like, *, latent_image, denoise_mask, cond):  # type: ignore[no-untyped-def]
        b, c, h, w = like.shape
        image = cond.get("concat_latent_image")
        if image is None:
            return like.new_zeros((b, c, h, w))
        image = torch.as_tensor(image).to(like.device, like.dtype)
        return _to_batch(_resize(image, h, w), b)


class DepthToImage(ConcatVariant):
    name = "depth"

    def concat(self, like, *, latent_image, denoise_mask, cond):  # type: ignore[no-untyped-def]
        b, _, h, w = like.shape
        depth = cond.get("concat_depth")
        if depth is None:
            return like.new_zeros((b, 1, h, w))
        d = torch.as_tensor(depth).to(like.device, torch.float32)
        if d.ndim == 4:  # an IMAGE (B, H, W, C): its first channel
            d = d[..., 0]
        d = _resize(d.reshape(-1, 1, *d.shape[-2:]), h, w, "bicubic")
        lo = d.amin(dim=(1, 2, 3), keepdim=True)
        hi = d.amax(dim=(1, 2, 3), keepdim=True)
        span = hi - lo
        d = torch.where(span > 0, 2.0 * (d - lo) / span.clamp_min(1e-12) - 1.0, torch.zeros_like(d))
        return _to_batch(d, b).to(like.dtype)


def x4_noise_level(cond: Mapping[str, Any]) -> int:
    return round(X4_MAX_NOISE_LEVEL * float(cond.get("noise_augmentation", 0.0)))


def _x4_alphas_cumprod() -> torch.Tensor:
    start, end = _X4_BETAS
    betas = torch.linspace(start**0.5, end**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class X4Upscaler(ConcatVariant):
    name = "x4_upscaler"

    def concat(self, like, *, latent_image, denoise_mask, cond):  # type: ignore[no-untyped-def]
        b, _, h, w = like.shape
        image = cond.get("concat_image")
        if image is None:
            image = like.new_zeros((1, 3, h, w))
        image = _resize(torch.as_tensor(image).to(like.device, torch.float32), h, w)
        level = x4_noise_level(cond)
        if level > 0:
            ab = float(_x4_alphas_cumprod()[level])
            seed = cond.get("seed")
            g = torch.Generator().manual_seed(_X4_NOISE_SEED if seed is None else int(seed) + _X4_SEED_OFFSET)
            noise = torch.randn(image.shape, generator=g).to(image.device)
            image = ab**0.5 * image + (1.0 - ab) ** 0.5 * noise
        return _to_batch(image, b).to(like.dtype)

    def adm(self, cond: Mapping[str, Any]) -> torch.Tensor | None:
        return torch.tensor([x4_noise_level(cond)], dtype=torch.long)


_VARIANTS: dict[str, type[ConcatVariant]] = {v.name: v for v in (InstructPix2Pix, DepthToImage, X4Upscaler)}


def concat_variant(name: str) -> ConcatVariant | None:
    """The conditioning builder of a detected UNet variant; None for plain and inpainting UNets."""
    cls = _VARIANTS.get(name)
    return cls() if cls is not None else None


def variant_model_sampling(name: str, prediction_type: str) -> ModelSampling | None:
    """The x4 upscaler's own noise schedule (linear 1e-4..2e-2); None: the family's default."""
    if name == X4Upscaler.name:
        start, end = _X4_BETAS
        return ModelSamplingDiscrete(prediction_type, linear_start=start, linear_end=end)
    return None
