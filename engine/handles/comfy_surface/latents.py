"""ComfyUI's latent-format objects (comfy.latent_formats) for diffgraph's model families.

Diffgraph's LATENT values hold raw VAE latents, as ComfyUI's do, so ``process_in`` / ``process_out`` are
ComfyUI's formulas (``(latent - shift) * scale`` into the model's space and back); the values and the
preview factors are ComfyUI's. The sampler itself maps latents with engine.diffusion.models.latent_formats
(the same numbers).
"""

from __future__ import annotations

import torch

from engine.diffusion.models.latent_formats import for_family
from engine.diffusion.sampling.preview import LATENT_RGB

# ---- latent formats ---------------------------------------------------------------------------


def _factors(family: str) -> tuple[list[list[float]] | None, list[float] | None]:
    factors, bias = LATENT_RGB[family]
    return [list(row) for row in factors], None if bias is None else list(bias)


class LatentFormat:
    """ComfyUI's latent-format object: raw VAE latents <-> the model's space."""

    scale_factor: float = 1.0
    shift_factor: float = 0.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors: list[list[float]] | None = None
    latent_rgb_factors_bias: list[float] | None = None
    taesd_decoder_name: str | None = None

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor


class SD15(LatentFormat):
    def __init__(self, scale_factor: float = 0.18215) -> None:
        self.scale_factor = scale_factor
        self.latent_rgb_factors, self.latent_rgb_factors_bias = _factors("sd1")
        self.taesd_decoder_name = "taesd_decoder"


class SDXL(LatentFormat):
    scale_factor = 0.13025

    def __init__(self) -> None:
        self.latent_rgb_factors, self.latent_rgb_factors_bias = _factors("sdxl")
        self.taesd_decoder_name = "taesdxl_decoder"


class SDXL_Playground_2_5(LatentFormat):  # noqa: N801 - ComfyUI's name
    scale_factor = 0.5


class SD_X4(LatentFormat):  # noqa: N801 - ComfyUI's name
    scale_factor = 0.08333


class SC_Prior(LatentFormat):  # noqa: N801 - ComfyUI's name
    latent_channels = 16


class SC_B(LatentFormat):  # noqa: N801 - ComfyUI's name
    scale_factor = 1.0 / 0.43


class SD3(LatentFormat):
    latent_channels = 16
    scale_factor = 1.5305
    shift_factor = 0.0609
    taesd_decoder_name = "taesd3_decoder"


class Flux(SD3):
    scale_factor = 0.3611
    shift_factor = 0.1159
    taesd_decoder_name = "taef1_decoder"


def _video(name: str, channels: int, dims: int = 3, scale: float = 1.0) -> type[LatentFormat]:
    return type(
        name, (LatentFormat,), {"latent_channels": channels, "latent_dimensions": dims, "scale_factor": scale}
    )


# Formats of model families diffgraph does not run: named so that packs importing or testing them load.
StableAudio1 = _video("StableAudio1", 64, 1)
Mochi = _video("Mochi", 12)
LTXV = _video("LTXV", 128)
HunyuanVideo = _video("HunyuanVideo", 16, 3, 0.476986)
Cosmos1CV8x8x8 = _video("Cosmos1CV8x8x8", 16)
Wan21 = _video("Wan21", 16)
Wan22 = type("Wan22", (Wan21,), {"latent_channels": 48})
HunyuanImage21 = _video("HunyuanImage21", 64, 2, 0.75289)
ACEAudio = _video("ACEAudio", 8, 2)

# By the name of the engine's format for a family (engine.diffusion.models.latent_formats.for_family).
LATENT_FORMATS: dict[str, type[LatentFormat]] = {"sd15": SD15, "sdxl": SDXL, "sd3": SD3, "flux": Flux}


def comfy_latent_format(family: str) -> LatentFormat:
    """ComfyUI's latent-format object for a diffgraph model family (the base format for others)."""
    return LATENT_FORMATS.get(for_family(family).name, LatentFormat)()
