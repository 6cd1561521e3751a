"""ComfyUI's `latent_preview`: sampler-step previews for packs that run their own samplers, drawn as the
runtime draws its own (--preview-method: TAESD decoders from models/vae_approx, the latent->RGB linear
map, or nothing) and reported with the progress of the running node (comfy.utils.ProgressBar).

`args.preview_method` (comfy.cli_args) is read at each call, so a pack that changes it (as ComfyUI-Manager
does) changes the previews; TAESD decoders of the families the runtime knows come from the runtime's
previewer, so pack samplers and diffgraph's own share one loaded decoder per file."""

from __future__ import annotations

import logging
from typing import Any

import comfy.utils
import folder_paths
import torch
from comfy.cli_args import LatentPreviewMethod, args
from comfy.taesd.taesd import TAESD
from PIL import Image

from engine.comfy_compat.binding import current as _current
from engine.diffusion.models.taesd import TAESD_DECODERS
from engine.diffusion.sampling.preview import LATENT_RGB
from engine.execution.context import PREVIEWER as _PREVIEWER

__all__ = [
    "MAX_PREVIEW_RESOLUTION",
    "TAESD",
    "Latent2RGBPreviewer",
    "LatentPreviewer",
    "TAESDPreviewerImpl",
    "get_previewer",
    "prepare_callback",
    "preview_to_image",
]

log = logging.getLogger("diffgraph.comfy_compat")

MAX_PREVIEW_RESOLUTION = args.preview_size

# A decoder file name (latent_format.taesd_decoder_name) -> one family the runtime's previewer knows it by.
_FAMILY_BY_DECODER = {name: family for family, (name, _channels) in reversed(TAESD_DECODERS.items())}


def preview_to_image(latent_image: torch.Tensor) -> Image.Image:
    """(H, W, 3) values in -1..1 as an 8-bit RGB image."""
    scaled = ((latent_image + 1.0) / 2.0).clamp(0, 1).mul(255)
    return Image.fromarray(scaled.to(device="cpu", dtype=torch.uint8).numpy())


class LatentPreviewer:
    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image | None:
        return None

    def decode_latent_to_preview_image(self, preview_format: str, x0: torch.Tensor) -> tuple[str, Any, int]:
        return ("JPEG", self.decode_latent_to_preview(x0), MAX_PREVIEW_RESOLUTION)


class TAESDPreviewerImpl(LatentPreviewer):
    def __init__(self, taesd: Any) -> None:
        self.taesd = taesd

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        # The runtime's decoder is shared with diffgraph's own previews, which may have moved it.
        with torch.no_grad():
            self.taesd.to(x0.device)
            image = self.taesd.decode(x0[:1].detach().float())[0]
        return preview_to_image(image.movedim(0, 2))


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


def _factors_for(latent_format: Any) -> tuple[Any, Any]:
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is not None:
        return factors, getattr(latent_format, "latent_rgb_factors_bias", None)
    channels = getattr(latent_format, "latent_channels", 4)
    family = {4: "sd1", 16: "flux"}.get(channels)
    return LATENT_RGB[family] if family else (None, None)


def _method() -> LatentPreviewMethod:
    method = args.preview_method
    return method if isinstance(method, LatentPreviewMethod) else LatentPreviewMethod(str(method))


def _taesd_for(device: Any, latent_format: Any) -> Any:
    """The TAESD decoder for `latent_format` (by its taesd_decoder_name), or None when the file is not in
    vae_approx: the runtime previewer's (loaded once) for the families it knows, else read here."""
    name = getattr(latent_format, "taesd_decoder_name", None)
    if name is None:
        return None
    service = _current().services.get(_PREVIEWER)
    family = _FAMILY_BY_DECODER.get(name)
    if service is not None and family is not None:
        return service.decoder_for(family)
    found = next((f for f in folder_paths.get_filename_list("vae_approx") if f.startswith(name)), None)
    if found is None:
        return None
    channels = getattr(latent_format, "latent_channels", 4)
    taesd = TAESD(None, folder_paths.get_full_path("vae_approx", found), latent_channels=channels)
    return taesd.eval().to(device if device is not None else "cpu")


def get_previewer(device: Any, latent_format: Any) -> LatentPreviewer | None:
    """The previewer --preview-method picks: TAESD (auto: when the decoder file is there), else the
    latent->RGB map (with a warning when TAESD was asked for and is missing), or None for `none`."""
    method = _method()
    if method == LatentPreviewMethod.NoPreviews:
        return None
    if method in (LatentPreviewMethod.Auto, LatentPreviewMethod.TAESD):
        taesd = _taesd_for(device, latent_format)
        if taesd is not None:
            return TAESDPreviewerImpl(taesd)
        if method == LatentPreviewMethod.TAESD:
            name = getattr(latent_format, "taesd_decoder_name", None)
            log.warning("TAESD previews enabled, but could not find models/vae_approx/%s", name)
    factors, bias = _factors_for(latent_format)
    return Latent2RGBPreviewer(factors, bias) if factors is not None else None


class _HandlePreviewer(LatentPreviewer):
    """Previews of a model object with only diffgraph's `preview_image` (the family's latent->RGB map)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        return self.handle.preview_image(x0, MAX_PREVIEW_RESOLUTION)


def _previewer_for(model: Any) -> LatentPreviewer | None:
    inner = getattr(model, "model", None)
    latent_format = getattr(inner, "latent_format", None)
    if latent_format is not None:
        return get_previewer(getattr(model, "load_device", None), latent_format)
    if hasattr(model, "preview_image") and _method() != LatentPreviewMethod.NoPreviews:
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
