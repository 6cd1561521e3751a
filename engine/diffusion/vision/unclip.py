"""unCLIP conditioning (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP
Latents"; Stability's SD 2.1 unCLIP): a CLIP image embedding, noised to a chosen level, and the embedding of
that level form the UNet's ADM vector ``y``.

As ComfyUI computes it (``model_base.unclip_adm`` and ``CLIPEmbeddingNoiseAugmentation``):

- the noise schedule is the "squaredcos_cap_v2" cosine schedule (Nichol & Dhariwal 2021, "Improved
  Denoising Diffusion Probabilistic Models", eq. 17, betas capped at 0.999) over 1000 levels;
- an embedding ``e`` (one image) at strength ``w`` and augmentation ``a`` gives level
  ``n = round(999 * a)`` and ``w * [sqrt(abar_n) e + sqrt(1 - abar_n) eps, timestep_embedding(n)]``, where
  ``eps`` is drawn from a CPU generator seeded with ``seed - 10`` (seed: the sampler's noise seed). ComfyUI
  leaves the embedding statistics at mean 0 / std 1 (the checkpoints do not store them), so no rescaling;
- several embeddings are summed, and the sum's embedding half is noised once more at level
  ``round(999 * merge)`` (SD2.1 unCLIP: merge 0.05). ComfyUI draws that noise unseeded; here it comes from
  the same seed, so results repeat.

SDXL "revision" uses the first half of the same vector (the noised embedding) as its pooled text vector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engine.diffusion.models.unet_blocks import timestep_embedding

MAX_NOISE_LEVEL = 1000
SD21_MERGE_NOISE = 0.05


def squaredcos_cap_v2_betas(steps: int = MAX_NOISE_LEVEL, max_beta: float = 0.999) -> list[float]:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)]


class NoiseAugmentor:
    """Noises an embedding to a level of the cosine schedule; ``dim`` is the embedding width (and the
    width of the level's sinusoidal embedding)."""

    def __init__(self, dim: int, levels: int = MAX_NOISE_LEVEL) -> None:
        self.dim = dim
        self.max_noise_level = levels
        abar = torch.tensor(squaredcos_cap_v2_betas(levels), dtype=torch.float64)
        abar = torch.cumprod(1.0 - abar, dim=0)
        self.sqrt_abar = abar.sqrt().float()
        self.sqrt_one_minus_abar = (1.0 - abar).sqrt().float()

    def level(self, augmentation: float) -> int:
        return round((self.max_noise_level - 1) * augmentation)

    def __call__(self, x: torch.Tensor, level: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noised x (1, dim), level embedding (1, dim)) for one embedding ``x`` of shape (dim,) or (1, dim)."""
        x = x.reshape(1, -1).float()
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
        z = self.sqrt_abar[level].to(x.device) * x + self.sqrt_one_minus_abar[level].to(x.device) * noise
        emb = timestep_embedding(torch.tensor([level], device=x.device), self.dim)
        return z, emb


def unclip_adm(
    unclip_conditioning: Sequence[Mapping[str, Any]],
    augmentor: NoiseAugmentor,
    *,
    seed: int = 0,
    merge_noise: float = 0.0,
) -> torch.Tensor:
    """The ADM vector (1, 2 * dim) of a conditioning entry's "unclip_conditioning" list (see module doc)."""
    parts: list[torch.Tensor] = []
    for item in unclip_conditioning:
        embeds = torch.as_tensor(item["clip_vision_output"].image_embeds)
        level = augmentor.level(float(item["noise_augmentation"]))
        for embed in embeds:
            z, emb = augmentor(embed, level, seed - 10)
            parts.append(torch.cat([z, emb], dim=1) * float(item["strength"]))
    if not parts:
        raise ValueError("unclip_conditioning is empty")
    if len(parts) == 1:
        return parts[0]
    total = torch.stack(parts).sum(0)
    z, emb = augmentor(total[:, : augmentor.dim], augmentor.level(merge_noise), seed - 10)
    return torch.cat([z, emb], dim=1)


def _embed_width(unclip_conditioning: Sequence[Mapping[str, Any]]) -> int:
    return int(torch.as_tensor(unclip_conditioning[0]["clip_vision_output"].image_embeds).shape[-1])


class UnclipAdmBuilder:
    """The ``y`` of an SD2.1 unCLIP UNet (adm_in_channels = 2 x the embedding width) for a CONDITIONING
    entry: from its "unclip_conditioning", else zeros (ComfyUI's SD21UNCLIP.encode_adm). ``seed`` comes
    in the entry as the sampler puts it there (DiffusionModel.encode_adm)."""

    def __init__(self, adm_channels: int) -> None:
        self.adm_channels = adm_channels
        self.augmentor = NoiseAugmentor(adm_channels // 2)

    def __call__(self, cond: Mapping[str, Any], width: int, height: int) -> torch.Tensor:
        items = cond.get("unclip_conditioning")
        if not items:
            return torch.zeros((1, self.adm_channels))
        if _embed_width(items) != self.augmentor.dim:
            raise ValueError(
                f"this unCLIP model takes {self.augmentor.dim}-wide image embeddings, the CLIP vision output "
                f"has {_embed_width(items)}: use the CLIP vision model that comes with the checkpoint"
            )
        merge = float(cond.get("unclip_noise_augment_merge", SD21_MERGE_NOISE))
        return unclip_adm(items, self.augmentor, seed=int(cond.get("seed", 0)), merge_noise=merge)


def revision_pooled(cond: Mapping[str, Any]) -> torch.Tensor | None:
    """SDXL's pooled vector from "unclip_conditioning" (ComfyUI's sdxl_pooled), None without it."""
    items = cond.get("unclip_conditioning")
    if not items:
        return None
    dim = _embed_width(items)
    adm = unclip_adm(items, NoiseAugmentor(dim), seed=int(cond.get("seed", 0)))
    return adm[:, :dim]
