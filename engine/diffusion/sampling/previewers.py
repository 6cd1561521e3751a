"""Choosing how sampler previews are drawn: ComfyUI's `--preview-method` (auto | latent2rgb | taesd | none).

- ``latent2rgb``: the model family's linear latent->RGB map (engine.diffusion.sampling.preview);
- ``taesd``: the family's TAESD decoder from the ``vae_approx`` folder (latent2rgb, with one warning, when
  the file is missing);
- ``auto``: TAESD when the family's decoder file is there, latent2rgb otherwise;
- ``none``: no sampler previews.

A `LatentPreviewer` lives on the runtime (its services) and loads each family's decoder once, on the
first preview that needs it, so runs that never show previews never read a decoder file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.diffusion.models.taesd import TAESD, TAESD_DECODERS, load_decoder

log = logging.getLogger(__name__)

PREVIEW_METHODS = ("auto", "latent2rgb", "taesd", "none")
DEFAULT_MAX_SIDE = 512


@dataclass(frozen=True)
class LatentPreview:
    """A not-yet-rendered preview of a sampler's clean-latent estimate `x0` (model space, B C h w).
    Calling it draws the model's own latent->RGB preview; a `LatentPreviewer` may draw it with TAESD."""

    family: str
    x0: torch.Tensor
    latent2rgb: Callable[[torch.Tensor], Any]

    def __call__(self) -> Any:
        return self.latent2rgb(self.x0)


def find_decoder_file(
    list_files: Callable[[], list[str]], full_path: Callable[[str], Path], name: str
) -> Path | None:
    """The first vae_approx file whose name starts with `name` (ComfyUI's rule: taesd_decoder.pth,
    taesd_decoder.safetensors... all qualify), or None."""
    for file in list_files():
        if Path(file).name.startswith(name):
            return full_path(file)
    return None


class LatentPreviewer:
    """Renders `LatentPreview`s with the configured method; caches one TAESD decoder per family."""

    def __init__(self, method: str, find_decoder: Callable[[str], Path | None]) -> None:
        if method not in PREVIEW_METHODS:
            raise ValueError(f"unknown preview method {method!r}; choose from {', '.join(PREVIEW_METHODS)}")
        self.method = method
        self._find_decoder = find_decoder
        self._decoders: dict[str, TAESD] = {}
        self._warned: set[str] = set()
        self._broken: set[str] = set()  # decoder files that failed to load, not retried
        self._lock = threading.Lock()

    def decoder_for(self, family: str) -> TAESD | None:
        """The family's TAESD decoder, loaded on first use; None when the family has none or its file is
        not in vae_approx (looked up again next time, so a file added later is picked up)."""
        entry = TAESD_DECODERS.get(family)
        if entry is None:
            return None
        name, channels = entry
        with self._lock:
            if name in self._broken:
                return None
            if name not in self._decoders:  # families sharing a file (sd1/sd2) share the decoder
                path = self._find_decoder(name)
                if path is None:
                    return None
                try:
                    self._decoders[name] = load_decoder(path, channels)
                except Exception as exc:  # a bad file must not fail sampling: latent2rgb, one warning
                    self._broken.add(name)
                    log.warning("could not load the TAESD decoder %s (%s): using latent2rgb", path, exc)
                    return None
            return self._decoders[name]

    def render(self, preview: Any, max_side: int = DEFAULT_MAX_SIDE) -> Any:
        """The image for a progress report's preview (a `LatentPreview` or any zero-argument function)."""
        if not isinstance(preview, LatentPreview):
            return preview()
        if self.method == "none":
            return None
        if self.method in ("auto", "taesd"):
            decoder = self.decoder_for(preview.family)
            if decoder is not None:
                return taesd_image(decoder, preview.x0, max_side)
            if self.method == "taesd" and preview.family not in self._warned:
                self._warned.add(preview.family)
                name = TAESD_DECODERS.get(preview.family, ("a TAESD decoder",))[0]
                log.warning(
                    "TAESD previews enabled, but models/vae_approx/%s* is missing: using latent2rgb", name
                )
        return preview()


def taesd_image(decoder: TAESD, x0: torch.Tensor, max_side: int = DEFAULT_MAX_SIDE) -> Any:
    """The first latent of `x0` through a TAESD decoder, as an RGB PIL image at most `max_side` wide/high."""
    from PIL import Image

    with torch.no_grad():
        decoder.to(x0.device)
        image = decoder.decode(x0[:1].detach().float())[0]
    pixels = ((image + 1.0) / 2.0).clamp(0, 1).mul(255).round().to("cpu", torch.uint8)
    result = Image.fromarray(pixels.movedim(0, -1).numpy(), "RGB")
    if max(result.size) > max_side:
        result.thumbnail((max_side, max_side))
    return result
