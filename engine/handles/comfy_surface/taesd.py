"""The Tiny AutoEncoder for Stable Diffusion (TAESD, Ollin Boer Bohan 2023: github.com/madebyollin/taesd)
as ComfyUI's comfy.taesd.taesd names it: packs build their own tiny decoders from ``conv``, ``Clamp`` and
``Block``. The layout (module indices) follows TAESD's published weights, so its files load as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.handles.comfy_surface.ops import disable_weight_init


def conv(n_in: int, n_out: int, **kwargs: Any) -> nn.Module:
    return disable_weight_init.Conv2d(n_in, n_out, 3, padding=1, **kwargs)  # type: ignore[no-any-return]


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
        self.skip: nn.Module = (
            disable_weight_init.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        )
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


def _load(path: str | Path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


class TAESD(nn.Module):
    latent_magnitude = 3
    latent_shift = 0.5

    def __init__(self, encoder_path: Any = None, decoder_path: Any = None, latent_channels: int = 4) -> None:
        super().__init__()
        self.taesd_encoder = Encoder(latent_channels)
        self.taesd_decoder = Decoder(latent_channels)
        self.vae_scale = nn.Parameter(torch.tensor(1.0))
        self.vae_shift = nn.Parameter(torch.tensor(0.0))
        if encoder_path is not None:
            self.taesd_encoder.load_state_dict(_load(encoder_path))
        if decoder_path is not None:
            self.taesd_decoder.load_state_dict(_load(decoder_path))

    @staticmethod
    def scale_latents(x: torch.Tensor) -> torch.Tensor:
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
