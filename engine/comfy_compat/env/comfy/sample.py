"""ComfyUI's comfy.sample for custom packs: the initial noise, and KSampler-style sampling on diffgraph's
MODEL handles (the same functions diffgraph's KSampler and SamplerCustom nodes use)."""

from __future__ import annotations

from typing import Any

import torch

from engine.comfy_compat import comfy_sampling as _sampling
from engine.comfy_compat.binding import current as _current
from engine.diffusion.sampling.noise import prepare_noise as _prepare_noise
from engine.execution.context import SAMPLERS as _SAMPLERS

_library = _current().services[_SAMPLERS]


def prepare_noise(latent_image: torch.Tensor, seed: int, noise_inds: Any = None) -> torch.Tensor:
    """The initial noise for a latent batch from `seed`, drawn on the CPU as ComfyUI draws it (one draw
    per batch index 0..max(noise_inds) when the LATENT has a batch_index)."""
    return _prepare_noise(latent_image, int(seed), None if noise_inds is None else list(noise_inds))


def fix_empty_latent_channels(model: Any, latent_image: torch.Tensor) -> torch.Tensor:
    """An all-zero latent made for another channel count gets the model's channel count (ComfyUI does
    this so EmptyLatentImage works for 16-channel models)."""
    channels = int(getattr(model, "latent_channels", latent_image.shape[1]))
    if latent_image.shape[1] != channels and torch.count_nonzero(latent_image) == 0:
        shape = (latent_image.shape[0], channels, *latent_image.shape[2:])
        return torch.zeros(shape, dtype=latent_image.dtype, device=latent_image.device)
    return latent_image


def sample(
    model: Any,
    noise: torch.Tensor,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Any,
    negative: Any,
    latent_image: torch.Tensor,
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    noise_mask: torch.Tensor | None = None,
    sigmas: torch.Tensor | None = None,
    callback: Any = None,
    disable_pbar: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """KSampler sampling with the given initial noise; the sampled latent (float32, CPU)."""
    sampler = _sampling.KSampler(
        _library, model, steps, None, sampler_name, scheduler, denoise, _sampling.model_options_of(model)
    )
    return sampler.sample(
        noise,
        positive,
        negative,
        cfg,
        latent_image=latent_image,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
        denoise_mask=noise_mask,
        sigmas=sigmas,
        callback=callback,
        disable_pbar=disable_pbar,
        seed=seed,
    )


def sample_custom(
    model: Any,
    noise: torch.Tensor,
    cfg: float,
    sampler: Any,
    sigmas: torch.Tensor,
    positive: Any,
    negative: Any,
    latent_image: torch.Tensor,
    noise_mask: torch.Tensor | None = None,
    callback: Any = None,
    disable_pbar: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """SamplerCustom's sampling: a SAMPLER value over explicit sigmas, classifier-free guided."""
    guider = _sampling.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sampler, sigmas, noise_mask, callback, disable_pbar, seed)


def prepare_sampling(
    model: Any, noise_shape: Any, positive: Any, negative: Any, noise_mask: Any
) -> tuple[Any, ...]:
    """Deprecated in ComfyUI (kept for old packs): returns its arguments unchanged."""
    return model, positive, negative, noise_mask, []


def cleanup_additional_models(models: Any) -> None:
    """Deprecated in ComfyUI (kept for old packs): nothing to clean up."""
