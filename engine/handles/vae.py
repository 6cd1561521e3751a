"""The VAE socket value: IMAGE (B, H, W, C) in 0..1 <-> LATENT samples (B, 4, H/f, W/f)."""

from __future__ import annotations

import torch

from engine.diffusion import compiling
from engine.handles.base import ManagedHandle
from engine.handles.comfy_surface.clip_vae import ComfyVaeMixin
from engine.memory import oom
from engine.memory.manager import ModelManager
from engine.memory.patcher import ModelPatcher


class VAEMissingError(ValueError):
    """A node needs a VAE but the checkpoint file had none."""


NO_VAE = "vae input is None: the checkpoint has no VAE weights; load a VAE file with VAELoader and connect it"


def require_vae(vae: VAEHandle | None) -> VAEHandle:
    """`vae`, or the error that says where a VAE comes from when the checkpoint had none."""
    if vae is None:
        raise VAEMissingError(NO_VAE)
    return vae


class VAEHandle(ComfyVaeMixin, ManagedHandle):
    """A KL autoencoder behind the memory manager. Images follow ComfyUI's IMAGE convention
    (float32, channels last, 0..1); latents are raw VAE latents, ComfyUI's LATENT space (the sampler maps
    them into the model's space, see engine.diffusion.models.latent_formats). ComfyUI's VAE attributes
    (first_stage_model, decode_tiled...) come from ComfyVaeMixin."""

    def __init__(self, patcher: ModelPatcher, *, manager: ModelManager, name: str = "vae") -> None:
        super().__init__(patcher, manager=manager, name=name)

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel (8 for every real SD VAE; 2 for the tiny test VAE)."""
        return int(self.module.config.downscale)

    @property
    def latent_channels(self) -> int:
        return int(self.module.config.embed_dim)

    def _device(self) -> torch.device:
        info = self.manager.device_info
        return getattr(info, "vae_device", None) or self.manager.compute_device

    def crop_to_multiple(self, image: torch.Tensor) -> torch.Tensor:
        """Crop (B, H, W, C) centrally to sides divisible by the downscale factor (ComfyUI's VAEEncode)."""
        f = self.downscale
        h, w = image.shape[1], image.shape[2]
        nh, nw = (h // f) * f, (w // f) * f
        if (nh, nw) == (h, w):
            return image
        if nh == 0 or nw == 0:
            raise ValueError(f"image of {w}x{h} pixels is smaller than the VAE's {f}-pixel latent cell")
        y, x = (h - nh) // 2, (w - nw) // 2
        return image[:, y : y + nh, x : x + nw, :]

    def encode(self, image: torch.Tensor, *, tile_size: int | None = None, overlap: int = 64) -> torch.Tensor:
        """IMAGE (B, H, W, C>=3) in 0..1 -> raw latents (B, C, H/f, W/f) on the CPU, float32.

        Without `tile_size` the whole image is encoded, falling back to tiles on out-of-memory."""
        if image.ndim != 4 or image.shape[-1] < 3:
            raise ValueError(
                f"VAE encode expects an IMAGE (batch, height, width, channels), got {tuple(image.shape)}"
            )
        image = self.crop_to_multiple(image)
        device = self._device()
        with self.use():
            pixels = image[..., :3].movedim(-1, 1).to(device, torch.float32) * 2.0 - 1.0
            if tile_size is not None:
                out = self.module.encode(pixels, tile_size=tile_size, tile_overlap=overlap)
            else:
                out = oom.vae_with_fallback(
                    self.module,
                    "encode",
                    pixels,
                    device=device,
                    on_oom=lambda: self.manager.free_memory(1 << 62),
                )
        return out.to("cpu", torch.float32)

    def decode(
        self, latent: torch.Tensor, *, tile_size: int | None = None, overlap: int = 64
    ) -> torch.Tensor:
        """Raw latents (B, C, h, w) -> IMAGE (B, h*f, w*f, 3) in 0..1 (clamped) on the CPU, float32."""
        if latent.ndim != 4:
            raise ValueError(
                f"VAE decode expects latents (batch, channels, height, width), got {tuple(latent.shape)}"
            )
        if latent.shape[1] != self.latent_channels:
            raise ValueError(
                f"the latent has {latent.shape[1]} channels but this VAE ({self.name}) takes "
                f"{self.latent_channels}; the latent comes from a different model family"
            )
        device = self._device()
        with self.use():
            z = latent.to(device, torch.float32)
            if tile_size is not None:
                out = self.module.decode(z, tile_size=tile_size, tile_overlap=overlap)
            else:
                out = oom.vae_with_fallback(
                    compiling.vae_for(self, self.module),
                    "decode",
                    z,
                    device=device,
                    on_oom=lambda: self.manager.free_memory(1 << 62),
                )
        image = ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return image.movedim(1, -1).to("cpu").contiguous()

    def __repr__(self) -> str:
        return f"VAEHandle({self.name!r}, downscale={self.downscale})"
