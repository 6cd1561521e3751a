"""ComfyUI's comfy.sampler_helpers for custom packs: the conditioning and mask helpers they call."""

from __future__ import annotations

import uuid
from typing import Any

import torch

from engine.diffusion.sampling.guidance import prepare_denoise_mask as _prepare_denoise_mask


def prepare_mask(noise_mask: torch.Tensor, shape: Any, device: Any) -> torch.Tensor:
    """A LATENT noise mask resized (bilinear) to a latent's (B, C, h, w), on `device`."""
    like = torch.zeros(tuple(shape))
    return _prepare_denoise_mask(noise_mask.float(), like).to(device)


def convert_cond(cond: list[Any]) -> list[dict[str, Any]]:
    """CONDITIONING [[tensor, options], ...] as ComfyUI's internal cond dicts (cross_attn, model_conds, uuid)."""
    out = []
    for tensor, options in cond:
        entry = dict(options)
        entry["model_conds"] = entry.get("model_conds", {})
        if tensor is not None:
            entry["cross_attn"] = tensor
        entry["uuid"] = uuid.uuid4()
        out.append(entry)
    return out


def get_models_from_cond(cond: list[Any], model_type: str) -> list[Any]:
    models: list[Any] = []
    for c in cond:
        options = c[1] if isinstance(c, list | tuple) else c
        if model_type in options:
            value = options[model_type]
            models += value if isinstance(value, list) else [value]
    return models


def get_additional_models(conds: Any, dtype: Any) -> tuple[list[Any], int]:
    """The extra models conditionings carry: diffgraph loads them itself when sampling, so none here."""
    return [], 0


def cleanup_additional_models(models: Any) -> None:
    """Nothing to clean up: diffgraph's model manager owns loaded models."""
