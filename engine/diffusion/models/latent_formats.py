"""Latent formats of the 16-channel VAEs: how raw VAE latents map to the space the diffusion model sees.

SD3 and FLUX.1 normalise their latents with a shift as well as a scale (values as in ComfyUI's
``comfy/latent_formats.py`` and the diffusers VAE configs ``scaling_factor`` / ``shift_factor``):
``model_latent = (vae_latent - shift) * scale`` and back ``vae_latent = model_latent / scale + shift``.
The SD1/SD2/SDXL formats have no shift; their scale lives in ``VAEConfig.scaling_factor``.
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


SD3 = LatentFormat("sd3", channels=16, scale_factor=1.5305, shift_factor=0.0609)
FLUX = LatentFormat("flux", channels=16, scale_factor=0.3611, shift_factor=0.1159)
