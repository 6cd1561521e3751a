"""SDXL "micro-conditioning": the ADM vector ``y`` fed to the UNet's ``label_emb``.

SDXL paper (Podell et al. 2023, §2.2): the UNet is conditioned on the original image size, the crop
coordinates and the target size; each number is embedded with the same sinusoidal embedding as the
timestep (256 dims each) and the embeddings are concatenated after the pooled text embedding of
OpenCLIP ViT-bigG. The order follows Stability's ``sgm`` conditioner list (and diffusers'
``add_time_ids``): original size (height, width), crop (top, left), target size (height, width) for the
base model -> 1280 + 6*256 = 2816 values; the refiner replaces the target size with one aesthetic score
-> 1280 + 5*256 = 2560 values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .unet_blocks import timestep_embedding

#: Width of the embedding of each size/crop/score number.
EMBED_DIM = 256


def embed_numbers(pooled: torch.Tensor, numbers: Sequence[float]) -> torch.Tensor:
    """Concatenate ``pooled`` (B, P) with the 256-dim sinusoidal embedding of each number -> (B, P + 256*n)."""
    if pooled.ndim != 2:
        raise ValueError(f"pooled text embedding must have shape (batch, dim), got {tuple(pooled.shape)}")
    values = torch.tensor([float(v) for v in numbers], dtype=torch.float32, device=pooled.device)
    emb = timestep_embedding(values, EMBED_DIM).reshape(1, -1)  # (1, n*256), number-major
    emb = emb.expand(pooled.shape[0], -1).to(pooled.dtype)
    return torch.cat([pooled, emb], dim=1)


def sdxl_adm(
    pooled: torch.Tensor,
    *,
    width: float,
    height: float,
    crop_w: float,
    crop_h: float,
    target_width: float,
    target_height: float,
) -> torch.Tensor:
    """ADM vector of SDXL base: pooled ++ emb(height, width, crop_h, crop_w, target_height, target_width)."""
    return embed_numbers(pooled, [height, width, crop_h, crop_w, target_height, target_width])


def sdxl_refiner_adm(
    pooled: torch.Tensor,
    *,
    width: float,
    height: float,
    crop_w: float,
    crop_h: float,
    aesthetic_score: float,
) -> torch.Tensor:
    """ADM vector of the SDXL refiner: pooled ++ emb(height, width, crop_h, crop_w, aesthetic_score)."""
    return embed_numbers(pooled, [height, width, crop_h, crop_w, aesthetic_score])
