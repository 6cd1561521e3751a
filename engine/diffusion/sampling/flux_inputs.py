"""FLUX.1 inputs beyond the text: Fill's concatenated image + mask channels and Kontext's reference latents.

**Fill** (``img_in`` sees 96 channels = latent 16 + masked-image latent 16 + mask 64): per CONDITIONING entry,
``FluxConcat.concat`` builds ComfyUI's ``Flux.concat_cond`` (``comfy/model_base.py``): the entry's
"concat_latent_image" (InpaintModelConditioning; zeros without one) resized to the latent (bilinear) and
mapped into the model's space, then, for models with more than twice the latent's channels, the mask
("concat_mask", else the sampling mask, else ones), averaged over its channels, resized to 8x the latent
and cut into 8x8 pixel blocks that become 64 channels (channel = row-in-block * 8 + column-in-block).
Models with exactly twice the channels (Flux Canny / Depth) get the image latent only.

**Kontext** (ReferenceLatent's "reference_latents", FluxKontextMultiReferenceLatentMethod's
"reference_latents_method"): the reference latents, mapped into the model's space, travel *inside* the
entry's ``y`` after the pooled vector and the guidance column, as a header ``[count, method, (c, h, w) per
reference]`` followed by the flattened latents. That keeps them with their entry through the batching of
``guidance.py`` (entries with different references have different ``y`` widths and are not batched
together), as the guidance column already does. ``unpack_references`` reads them back for the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from engine.diffusion.models.latent_formats import FLUX, LatentFormat

from .diffusion_model import _to_batch

REFERENCE_METHODS = ("offset", "index", "uxo")
MASK_BLOCK = 8  # pixels per latent pixel of the Fill model's mask channels


def _resized(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(t.shape[-2:]) == (h, w):
        return t
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)


def fill_mask_channels(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A pixel mask (B, [C,] H, W) -> (B, 64, h, w): resized to (8h, 8w), each 8x8 block as 64 channels."""
    m = mask.float()
    if m.ndim == 3:
        m = m[:, None]
    m = _resized(m.mean(dim=1, keepdim=True), h * MASK_BLOCK, w * MASK_BLOCK)
    b = m.shape[0]
    m = m.view(b, h, MASK_BLOCK, w, MASK_BLOCK).permute(0, 2, 4, 1, 3)  # (B, row-in-block, col, h, w)
    return m.reshape(b, MASK_BLOCK * MASK_BLOCK, h, w)


class FluxConcat:
    """The extra input channels of a Flux Fill (or Canny / Depth) model, and its ``y`` (the `DiffusionModel`
    "variant" interface: ``concat`` and ``adm``)."""

    def __init__(
        self, in_channels: int, out_channels: int, adm_builder: Any, latent_format: LatentFormat = FLUX
    ):
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.adm_builder = adm_builder
        self.latent_format = latent_format

    def adm(self, cond: Mapping[str, Any]) -> torch.Tensor | None:
        return self.adm_builder(cond, 0, 0)  # type: ignore[no-any-return]  # Flux's y has no size terms

    def concat(
        self,
        like: torch.Tensor,
        *,
        latent_image: torch.Tensor | None,
        denoise_mask: torch.Tensor | None,
        cond: Mapping[str, Any],
    ) -> torch.Tensor | None:
        b, _, h, w = like.shape
        image = cond.get("concat_latent_image")
        if image is None:
            image = like.new_zeros(b, self.out_channels, h, w)
        else:
            image = self.latent_format.process_in(torch.as_tensor(image).float())
        # ComfyUI resizes before mapping into model space; both are linear per pixel, so the order is moot.
        image = _to_batch(_resized(image.to(like.device, like.dtype), h, w), b)
        if self.in_channels <= 2 * self.out_channels:
            return image
        mask = cond.get("concat_mask", denoise_mask)
        if mask is None:
            mask = like.new_ones(b, 1, h * MASK_BLOCK, w * MASK_BLOCK)
        mask = fill_mask_channels(torch.as_tensor(mask).to(like.device), h, w).to(like.dtype)
        return torch.cat([image, _to_batch(mask, b)], dim=1)


def pack_references(cond: Mapping[str, Any], rows: int) -> torch.Tensor | None:
    """The entry's reference latents as extra ``y`` columns (rows, n), or None when it has none."""
    refs = cond.get("reference_latents")
    if not refs:
        return None
    method = str(cond.get("reference_latents_method") or "offset")
    if method not in REFERENCE_METHODS:
        raise ValueError(f"reference_latents_method {method!r} is not one of {REFERENCE_METHODS}")
    latents = [FLUX.process_in(torch.as_tensor(r).float()) for r in refs]
    header = [float(len(latents)), float(REFERENCE_METHODS.index(method))]
    for r in latents:
        header += [float(d) for d in r.shape[1:]]
    head = torch.tensor(header).expand(rows, -1)
    body = [_to_batch(r, rows).reshape(rows, -1) for r in latents]
    return torch.cat([head, *body], dim=1)


def unpack_references(extra: torch.Tensor) -> tuple[list[torch.Tensor], str]:
    """``pack_references``' columns (B, n) -> the reference latents (each (B, C, h, w)) and the method.
    Every row must carry the same header (callers split the batch otherwise: `same_references`)."""
    count, method = int(extra[0, 0]), REFERENCE_METHODS[int(extra[0, 1])]
    shapes = [tuple(int(v) for v in extra[0, 2 + 3 * i : 5 + 3 * i]) for i in range(count)]
    pos = 2 + 3 * count
    refs = []
    for c, h, w in shapes:
        n = c * h * w
        refs.append(extra[:, pos : pos + n].reshape(-1, c, h, w))
        pos += n
    return refs, method


def same_references(extra: torch.Tensor) -> bool:
    """Whether every row has the same reference header (so one model call serves the batch)."""
    if extra.shape[0] < 2:
        return True
    count = int(extra[0, 0])
    head = extra[:, : 2 + 3 * count]
    return bool((head == head[:1]).all())
