"""Entry points for the KSampler / KSamplerAdvanced / SamplerCustom nodes.

Progress and interrupts: ``callback`` is the samplers' own ``StepCallback``: it gets one ``StepInfo``
(0-based ``index``, ``total``, ``x``, ``denoised`` = the clean-latent estimate, for previews) after each
step and is handed to the sampler unchanged. To interrupt sampling, raise from the callback (e.g. the
executor's InterruptedError): the exception propagates out of ``sample``/``sample_custom`` unchanged.

The sampler and scheduler registries are arguments (the runtime's one ``SamplingLibrary``); nothing
here builds them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from engine.diffusion.models.latent_formats import IDENTITY, LatentFormat, latent_in

from .diffusion_model import DiffusionModel
from .guidance import CFGDenoiser, Conditioning, InpaintDenoiser, prepare_denoise_mask
from .model_sampling import ModelSampling, is_max_denoise
from .noise import inpaint_noise, prepare_noise
from .registry import SamplerRegistry, SamplerSpec, SchedulerRegistry
from .samplers._common import StepCallback, StepInfo
from .schedulers import sigmas_with_denoise

__all__ = [
    "prepare_noise",
    "calculate_sigmas",
    "ksampler_sigmas",
    "sample",
    "sample_custom",
    "StepCallback",
    "StepInfo",
]


def calculate_sigmas(
    model_sampling: ModelSampling,
    scheduler: str,
    steps: int,
    *,
    schedulers: SchedulerRegistry,
    sampler: SamplerSpec | None = None,
) -> torch.Tensor:
    """Sigmas for ``steps`` steps of ``scheduler``; for samplers that discard the penultimate sigma
    (dpm_2, uni_pc) compute one step more and drop it, as ComfyUI's KSampler does."""
    discard = sampler is not None and sampler.discard_penultimate_sigma
    sig = schedulers.sigmas(scheduler, model_sampling, steps + 1 if discard else steps)
    if discard:
        sig = torch.cat([sig[:-2], sig[-1:]])
    return sig


def ksampler_sigmas(
    model_sampling: ModelSampling,
    scheduler: str,
    steps: int,
    denoise: float = 1.0,
    *,
    schedulers: SchedulerRegistry,
    sampler: SamplerSpec | None = None,
) -> torch.Tensor:
    """The KSampler schedule including the ``denoise`` fraction (see ``sigmas_with_denoise``)."""
    return sigmas_with_denoise(
        lambda n: calculate_sigmas(model_sampling, scheduler, n, sampler=sampler, schedulers=schedulers),
        steps,
        denoise,
    )


def sample_custom(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sampler: SamplerSpec,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    latent: torch.Tensor,
    callback: StepCallback | None = None,
    *,
    noise_mask: torch.Tensor | None = None,
    seed: int = 0,
    model_sampling: ModelSampling | None = None,
    sampler_options: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Run ``sampler`` over ``sigmas`` from ``latent`` noised with ``noise`` (SamplerCustom family).

    Works in the model's space: ``latent`` and the result are model-space latents (callers map LATENT
    values in and out with the model's latent format, see ``sample``).

    ``denoiser`` is a guider such as ``CFGDenoiser`` (it must expose ``model_sampling`` unless one
    is passed). ``noise_mask`` (already shaped like the latent, see ``prepare_denoise_mask``) keeps
    the region where it is 0 on the input latent. Pass zeros as ``noise`` for add_noise = off. Per-step
    noise of stochastic samplers comes from ``seed`` as ComfyUI draws it (``SamplerSpec.make_noise``).
    """
    ms = model_sampling or getattr(denoiser, "model_sampling", None)
    if ms is None:
        raise ValueError("sample_custom needs model_sampling= or a denoiser with a .model_sampling attribute")
    sigmas = sigmas.to(torch.float32)
    if len(sigmas) < 2:
        return latent.clone()
    noise = noise.to(latent.device, latent.dtype)
    den: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = denoiser
    if noise_mask is not None:
        renoise = inpaint_noise(noise, seed) if sampler.random_inpaint_noise else noise
        den = InpaintDenoiser(
            denoiser, ms, latent_image=latent, noise=renoise, mask=noise_mask, sigmas=sigmas
        )
    x = ms.noise_scaling(sigmas[0], noise, latent, is_max_denoise(ms, sigmas))
    step_noise = sampler.make_noise(x, sigmas, seed)
    # The sampler's result is returned as it is, also when inpainting: the mask already acted on every
    # model call, and blending the result once more would apply a soft mask's fractional values twice.
    out = sampler(den, x, sigmas, noise=step_noise, callback=callback, **dict(sampler_options or {}))
    return ms.inverse_noise_scaling(sigmas[-1], out)


def sample(
    model: DiffusionModel,
    noise: torch.Tensor | None,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning | None,
    latent_image: torch.Tensor,
    *,
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    noise_mask: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    seed: int = 0,
    batch_inds: Sequence[int] | None = None,
    samplers: SamplerRegistry,
    schedulers: SchedulerRegistry,
    transformer_options: dict[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """KSampler semantics; KSamplerAdvanced maps onto it as add_noise = not disable_noise,
    start_at_step/end_at_step = start_step/last_step, return_with_leftover_noise = "disable" ⇔
    force_full_denoise = True.

    ``noise``: the initial noise, or None to draw it with ``prepare_noise(latent_image, seed,
    batch_inds)``. ``noise_mask``: a LATENT's "noise_mask" at any resolution (1 = repaint).
    ``samplers`` / ``schedulers``: where ``sampler_name`` and ``scheduler`` are looked up (the
    runtime's library). ``model_options``: the MODEL's ComfyUI options (see ``CFGDenoiser``).
    ``latent_image`` is a raw VAE latent (the LATENT space); it is mapped into the model's space with
    ``model.latent_format`` (an all-zero one is left as is) and the result mapped back, as ComfyUI's
    CFGGuider does; the noise is not scaled. The callback's latents are in model space (previews).
    Returns the sampled latent (same shape, dtype and device as ``latent_image``).
    """
    spec = samplers.get(sampler_name)
    ms = model.model_sampling
    sigmas = ksampler_sigmas(ms, scheduler, steps, denoise, sampler=spec, schedulers=schedulers)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0.0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return latent_image.clone()
    if len(sigmas) < 2:
        return latent_image.clone()
    if disable_noise:
        noise = torch.zeros_like(latent_image)
    elif noise is None:
        noise = prepare_noise(latent_image, seed, batch_inds)
    noise = noise.to(latent_image.device, latent_image.dtype)
    fmt: LatentFormat = getattr(model, "latent_format", IDENTITY)
    latent = latent_in(fmt, latent_image)
    mask = prepare_denoise_mask(noise_mask, latent) if noise_mask is not None else None
    # ComfyUI's sampler puts the run's schedule in transformer_options["sample_sigmas"] for every run;
    # model patches and pack guidance functions look the current step up in it.
    options = dict(model_options or {})
    topts = dict(options.get("transformer_options") or transformer_options or {})
    topts["sample_sigmas"] = sigmas.to(latent.device)
    options["transformer_options"] = topts
    if getattr(model, "seed", 0) is None:
        model.seed = seed  # the conditioning's noise (unCLIP) follows the sampler's seed, as in ComfyUI
    guider = CFGDenoiser(
        model,
        positive,
        negative,
        cfg,
        like=latent,
        latent_image=latent,
        denoise_mask=mask,
        model_options=options,
    )
    out = sample_custom(guider, spec, sigmas, noise, latent, callback, noise_mask=mask, seed=seed)
    return fmt.process_out(out.float()).to(latent_image.dtype)
