"""ComfyUI's `latent_preview`: sampler-step previews through the latent->RGB linear map (diffgraph has
no TAESD decoder), reported with the progress of the running node (comfy.utils.ProgressBar)."""

from __future__ import annotations

import logging
from typing import Any

import comfy.utils
import torch
from comfy.cli_args import LatentPreviewMethod, args
from PIL import Image

from engine.diffusion.sampling.preview import LATENT_RGB

log = logging.getLogger("diffgraph.comfy_compat")

MAX_PREVIEW_RESOLUTION = args.preview_size


def preview_to_image(latent_image: torch.Tensor) -> Image.Image:
    """(H, W, 3) values in -1..1 as an 8-bit RGB image."""
    scaled = ((latent_image + 1.0) / 2.0).clamp(0, 1).mul(255)
    return Image.fromarray(scaled.to(device="cpu", dtype=torch.uint8).numpy())


class LatentPreviewer:
    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image | None:
        return None

    def decode_latent_to_preview_image(self, preview_format: str, x0: torch.Tensor) -> tuple[str, Any, int]:
        return ("JPEG", self.decode_latent_to_preview(x0), MAX_PREVIEW_RESOLUTION)


class Latent2RGBPreviewer(LatentPreviewer):
    """The first latent of a batch (first frame of a video latent) through RGB = latent . factors + bias."""

    def __init__(self, latent_rgb_factors: Any, latent_rgb_factors_bias: Any = None) -> None:
        self.latent_rgb_factors = torch.tensor(latent_rgb_factors, device="cpu").transpose(0, 1)
        self.latent_rgb_factors_bias = (
            torch.tensor(latent_rgb_factors_bias, device="cpu")
            if latent_rgb_factors_bias is not None
            else None
        )

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        factors = self.latent_rgb_factors.to(dtype=x0.dtype, device=x0.device)
        bias = self.latent_rgb_factors_bias
        if bias is not None:
            bias = bias.to(dtype=x0.dtype, device=x0.device)
        first = x0[0, :, 0] if x0.ndim == 5 else x0[0]
        return preview_to_image(torch.nn.functional.linear(first.movedim(0, -1), factors, bias=bias))


class TAESD:
    """ComfyUI's tiny autoencoder is not part of diffgraph: asking for it says so (packs fall back to
    Latent2RGB previews when it is missing)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("TAESD previews are not available in diffgraph; use latent2rgb previews")


class TAESDPreviewerImpl(LatentPreviewer):
    def __init__(self, taesd: Any) -> None:
        self.taesd = taesd

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        return preview_to_image(self.taesd.decode(x0[:1])[0].movedim(0, 2))


def _factors_for(latent_format: Any) -> tuple[Any, Any]:
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is not None:
        return factors, getattr(latent_format, "latent_rgb_factors_bias", None)
    channels = getattr(latent_format, "latent_channels", 4)
    family = {4: "sd1", 16: "flux"}.get(channels)
    return LATENT_RGB[family] if family else (None, None)


def get_previewer(device: Any, latent_format: Any) -> LatentPreviewer | None:
    if args.preview_method == LatentPreviewMethod.NoPreviews:
        return None
    factors, bias = _factors_for(latent_format)
    return Latent2RGBPreviewer(factors, bias) if factors is not None else None


class _HandlePreviewer(LatentPreviewer):
    """Previews of a diffgraph MODEL handle, through its own family's latent->RGB map."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        return self.handle.preview_image(x0, MAX_PREVIEW_RESOLUTION)


def _previewer_for(model: Any) -> LatentPreviewer | None:
    inner = getattr(model, "model", None)
    latent_format = getattr(inner, "latent_format", None)
    if latent_format is not None:
        return get_previewer(getattr(model, "load_device", None), latent_format)
    if hasattr(model, "preview_image"):
        return _HandlePreviewer(model)
    return None


def prepare_callback(model: Any, steps: int, x0_output_dict: dict[str, Any] | None = None) -> Any:
    """A sampler callback (step, x0, x, total_steps) that reports step + 1 of total with a preview of
    x0, and keeps the last x0 in `x0_output_dict["x0"]` when given."""
    previewer = _previewer_for(model)
    bar = comfy.utils.ProgressBar(steps)

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer is not None else None
        bar.update_absolute(step + 1, total_steps, preview)

    return callback
