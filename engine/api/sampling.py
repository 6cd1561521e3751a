"""Sampling for node code: what the KSampler and custom-sampling nodes call, and the values on the
SAMPLER / SIGMAS / NOISE / GUIDER sockets (engine.handles.sampling, published here; imports torch).

The sampler and scheduler choices come from the runtime's sampling library, `context.samplers`; packs
add entries with `api.register_sampler` / `api.register_scheduler`.
"""

from __future__ import annotations

from engine.handles.flow_guidance import skip_layer_guidance, skip_layer_guidance_simple
from engine.handles.flow_loading import auraflow_sampling, flux_sampling, sd3_sampling
from engine.handles.sampling import (
    DisabledNoise,
    Guider,
    RandomNoise,
    SamplingLibrary,
    beta_sigmas,
    custom_sample,
    euler_cfg_pp_alternative_sampler,
    exponential_sigmas,
    flip_sigmas,
    karras_sigmas,
    ksample,
    lcm_upscale_sampler,
    scheduler_sigmas,
    sd_turbo_sigmas,
    split_sigmas,
)

__all__ = [
    "beta_sigmas",
    "euler_cfg_pp_alternative_sampler",
    "lcm_upscale_sampler",
    "auraflow_sampling",
    "flux_sampling",
    "sd3_sampling",
    "skip_layer_guidance",
    "skip_layer_guidance_simple",
    "DisabledNoise",
    "Guider",
    "RandomNoise",
    "SamplingLibrary",
    "custom_sample",
    "exponential_sigmas",
    "flip_sigmas",
    "karras_sigmas",
    "ksample",
    "scheduler_sigmas",
    "sd_turbo_sigmas",
    "split_sigmas",
]
