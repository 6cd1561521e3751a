"""Latent formats: how raw VAE latents map to the space the diffusion model sees.

diffgraph's LATENT values hold raw VAE latents, as ComfyUI's do; the sampler maps them into the model's
normalised space on the way in (``model_latent = (vae_latent - shift) * scale``) and back on the way out
(``vae_latent = model_latent / scale + shift``). SD1/SD2 scale by 0.18215 (LDM paper appendix), SDXL by
0.13025 (sd_xl_base.yaml); SD3 and FLUX.1 also shift (values as in ComfyUI's ``comfy/latent_formats.py``
and the diffusers VAE configs ``scaling_factor`` / ``shift_factor``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentFormat:
    name: str
    channels: int
    scale_factor: float
    shift_factor: float = 0.0

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw VAE latent (B, C, h, w) -> the model's normalised latent, same shape."""
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        """The model's normalised latent -> raw VAE latent for decoding, same shape."""
        return latent / self.scale_factor + self.shift_factor


# A model of unknown family: latents pass unchanged (ComfyUI's base LatentFormat, scale 1).
IDENTITY = LatentFormat("identity", channels=4, scale_factor=1.0)
SD15 = LatentFormat("sd15", channels=4, scale_factor=0.18215)
SDXL = LatentFormat("sdxl", channels=4, scale_factor=0.13025)
SD3 = LatentFormat("sd3", channels=16, scale_factor=1.5305, shift_factor=0.0609)
FLUX = LatentFormat("flux", channels=16, scale_factor=0.3611, shift_factor=0.1159)
# The SD x4 upscaler's own VAE (x4-upscaling.yaml scale_factor 0.08333; ComfyUI's SD_X4).
SD_X4 = LatentFormat("sd_x4", channels=4, scale_factor=0.08333)

# diffgraph's model family names (ModelHandle.family) -> their latent format.
FAMILY_FORMATS: dict[str, LatentFormat] = {
    "sd1": SD15,
    "sd2": SD15,
    "sd2_v": SD15,
    "sdxl": SDXL,
    "sdxl_refiner": SDXL,
    "sd3": SD3,
    "flux": FLUX,
}


def for_family(family: str) -> LatentFormat:
    """The latent format of a model family; IDENTITY for a family not listed."""
    return FAMILY_FORMATS.get(family, IDENTITY)


def latent_in(fmt: LatentFormat, latent: torch.Tensor) -> torch.Tensor:
    """A LATENT's samples into model space for sampling. An all-zero latent (an empty latent image) is
    left as it is, as ComfyUI's CFGGuider does: shifting it would start SD3/Flux txt2img off zero."""
    if not torch.any(latent != 0):
        return latent
    return fmt.process_in(latent)
