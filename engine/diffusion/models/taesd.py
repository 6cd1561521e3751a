"""The Tiny AutoEncoder for Stable Diffusion (TAESD, Ollin Boer Bohan 2023: github.com/madebyollin/taesd),
the small decoder behind fast live previews.

Module indices follow TAESD's published weights (taesd_decoder, taesdxl_decoder, taesd3_decoder,
taef1_decoder and their encoders), so those files load as they are: a decoder is a `nn.Sequential` whose
keys read ``1.weight``, ``3.conv.0.weight``, ``3.skip.weight``... The names (`conv`, `Clamp`, `Block`,
`Encoder`, `Decoder`, `TAESD`) are those of ComfyUI's comfy.taesd.taesd, which custom packs build on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

# Which decoder file previews a model family (ComfyUI's LatentFormat.taesd_decoder_name) and its
# latent channels. A vae_approx file whose name starts with the decoder name is that family's decoder.
TAESD_DECODERS: dict[str, tuple[str, int]] = {
    "sd1": ("taesd_decoder", 4),
    "sd2": ("taesd_decoder", 4),
    "sd2_v": ("taesd_decoder", 4),
    "sdxl": ("taesdxl_decoder", 4),
    "sdxl_refiner": ("taesdxl_decoder", 4),
    "sd3": ("taesd3_decoder", 16),
    "flux": ("taef1_decoder", 16),
}


def conv(n_in: int, n_out: int, **kwargs: Any) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of latents to about ±3: 3 tanh(x / 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Three 3x3 convolutions with ReLUs between, plus a (1x1 when the width changes) skip, then ReLU."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out)
        )
        self.skip: nn.Module = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))  # type: ignore[no-any-return]


def _stage(down: bool) -> list[nn.Module]:
    blocks: list[nn.Module] = [Block(64, 64), Block(64, 64), Block(64, 64)]
    if down:
        return [conv(64, 64, stride=2, bias=False), *blocks]
    return [*blocks, nn.Upsample(scale_factor=2), conv(64, 64, bias=False)]


def Encoder(latent_channels: int = 4) -> nn.Sequential:  # noqa: N802 - ComfyUI's name
    """Image (B, 3, H, W) in 0..1 -> latents (B, C, H/8, W/8)."""
    return nn.Sequential(
        conv(3, 64), Block(64, 64), *_stage(True), *_stage(True), *_stage(True), conv(64, latent_channels)
    )


def Decoder(latent_channels: int = 4) -> nn.Sequential:  # noqa: N802 - ComfyUI's name
    """Latents (B, C, h, w) -> image (B, 3, 8h, 8w) in about 0..1."""
    return nn.Sequential(
        Clamp(), conv(latent_channels, 64), nn.ReLU(), *_stage(False), *_stage(False), *_stage(False),
        Block(64, 64), conv(64, 3),
    )  # fmt: skip


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A TAESD state dict from a .safetensors file or a (weights-only) torch pickle (.pth / .pt)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


class TAESD(nn.Module):
    """Encoder + decoder. `decode` takes latents as the sampler sees them (the model's space) and gives
    an image in -1..1; `vae_scale` / `vae_shift` (1 and 0 for previews) let the pair stand in for a VAE
    on raw latents, as ComfyUI sets them when a TAESD file is loaded as a VAE."""

    latent_magnitude = 3
    latent_shift = 0.5

    def __init__(self, encoder_path: Any = None, decoder_path: Any = None, latent_channels: int = 4) -> None:
        super().__init__()
        self.taesd_encoder = Encoder(latent_channels)
        self.taesd_decoder = Decoder(latent_channels)
        self.vae_scale = nn.Parameter(torch.tensor(1.0))
        self.vae_shift = nn.Parameter(torch.tensor(0.0))
        if encoder_path is not None:
            self.taesd_encoder.load_state_dict(load_weights(encoder_path))
        if decoder_path is not None:
            self.taesd_decoder.load_state_dict(load_weights(decoder_path))

    @staticmethod
    def scale_latents(x: torch.Tensor) -> torch.Tensor:
        """Latents (about ±3) -> 0..1, the range TAESD's training stored them in."""
        return x.div(2 * TAESD.latent_magnitude).add(TAESD.latent_shift).clamp(0, 1)

    @staticmethod
    def unscale_latents(x: torch.Tensor) -> torch.Tensor:
        return x.sub(TAESD.latent_shift).mul(2 * TAESD.latent_magnitude)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> image in -1..1."""
        return self.taesd_decoder((x - self.vae_shift) * self.vae_scale).sub(0.5).mul(2)  # type: ignore[no-any-return]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in -1..1 -> latents."""
        return self.taesd_encoder(x * 0.5 + 0.5) / self.vae_scale + self.vae_shift  # type: ignore[no-any-return]


def load_decoder(path: str | Path, latent_channels: int) -> TAESD:
    """A TAESD with only its decoder loaded (what previews use), in eval mode."""
    return TAESD(None, path, latent_channels=latent_channels).eval()
