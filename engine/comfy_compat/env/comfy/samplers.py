"""ComfyUI's comfy.samplers for custom packs, over the runtime's sampling library.

`KSampler.SAMPLERS` / `SCHEDULERS`, `SAMPLER_NAMES`, `KSAMPLER_NAMES`, `SCHEDULER_NAMES` are live lists of
the library's names, and a pack adding a name registers it (engine.comfy_compat.sampler_registration);
`SCHEDULER_HANDLERS` likewise. `KSAMPLER` objects are SAMPLER values diffgraph's SamplerCustom runs;
`CFGGuider` is a GUIDER value diffgraph's SamplerCustomAdvanced runs (subclasses overriding
`predict_noise` included).
"""

from __future__ import annotations

from functools import partial as _partial
from typing import Any

import torch

from engine.comfy_compat import comfy_sampling as _sampling
from engine.comfy_compat import sampler_registration as _registration
from engine.comfy_compat.binding import current as _current
from engine.comfy_compat.comfy_sampling import (
    CFGGuider,
    calc_cond_batch,
    cast_to_load_options,
    cfg_function,
    sampling_function,
)
from engine.comfy_compat.sampler_registration import SchedulerHandler
from engine.comfy_compat.sampling_bridge import ComfyKSampler as KSAMPLER
from engine.comfy_compat.sampling_bridge import LiveNames as _LiveNames
from engine.diffusion.sampling import schedulers as _schedulers
from engine.execution.context import SAMPLERS as _SAMPLERS

__all__ = [
    "KSAMPLER",
    "KSAMPLER_NAMES",
    "SAMPLER_NAMES",
    "SCHEDULER_HANDLERS",
    "SCHEDULER_NAMES",
    "CFGGuider",
    "KSampler",
    "Sampler",
    "SchedulerHandler",
    "calc_cond_batch",
    "cast_to_load_options",
    "cast_transformer_options",
    "calculate_sigmas",
    "cfg_function",
    "ksampler",
    "sample",
    "sampler_object",
    "sampling_function",
]

_library = _current().services[_SAMPLERS]


def _add_sampler(name: str) -> None:
    _registration.add_sampler_name(_library, name)


SCHEDULER_HANDLERS = _registration.SchedulerHandlers(_library)
KSAMPLER_NAMES = _LiveNames(_library.sampler_names, _add_sampler)
SAMPLER_NAMES = _LiveNames(_library.sampler_names, _add_sampler)
SCHEDULER_NAMES = _LiveNames(_library.scheduler_names, SCHEDULER_HANDLERS.add_name)


class Sampler:
    """ComfyUI's sampler base class (packs subclass KSAMPLER, which is a diffgraph SamplerSpec)."""

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def max_denoise(self, model_wrap: Any, sigmas: torch.Tensor) -> bool:
        ms = model_wrap.inner_model.model_sampling
        return float(sigmas[0]) >= float(ms.sigma_max) * (1 - 1e-5)


class _KSamplerClass(type):
    """Packs sometimes rebind `KSampler.SAMPLERS = KSampler.SAMPLERS + [name]`: the new names are
    registered and the attribute stays the live list."""

    def __setattr__(cls, name: str, value: Any) -> None:
        live = {"SAMPLERS": SAMPLER_NAMES, "SCHEDULERS": SCHEDULER_NAMES}.get(name)
        if live is not None and value is not live:
            live.extend([v for v in value if v not in live])
            return
        super().__setattr__(name, value)


class KSampler(_sampling.KSampler, metaclass=_KSamplerClass):
    """ComfyUI's KSampler(model, steps, device, sampler=None, scheduler=None, denoise=None, model_options={})."""

    SAMPLERS = SAMPLER_NAMES
    SCHEDULERS = SCHEDULER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = _sampling.DISCARD_PENULTIMATE_SIGMA_SAMPLERS

    def __init__(
        self,
        model: Any,
        steps: int,
        device: Any = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        denoise: float | None = None,
        model_options: Any = None,
    ) -> None:
        super().__init__(_library, model, steps, device, sampler, scheduler, denoise, model_options)


def calculate_sigmas(model_sampling: Any, scheduler_name: str, steps: int) -> torch.Tensor:
    """`steps` sigmas (ending at 0) of a scheduler of the runtime's library."""
    return _sampling.calculate_sigmas(_library, model_sampling, scheduler_name, steps)


def ksampler(name: str, extra_options: Any = None, inpaint_options: Any = None) -> KSAMPLER:
    """The SAMPLER for a sampler name (diffgraph's own samplers run directly; `extra_options` are bound)."""
    spec = _library.sampler(name)
    if isinstance(spec, KSAMPLER) and spec.direct is None:
        return KSAMPLER(
            spec.sampler_function,
            {**spec.extra_options, **dict(extra_options or {})},
            inpaint_options,
            name=name,
        )
    comfy_function = _sampling_function_for(name)
    return KSAMPLER(comfy_function, extra_options, inpaint_options, name=name, direct=spec)


def _sampling_function_for(name: str) -> Any:
    import comfy.k_diffusion.sampling as k_sampling  # type: ignore[import-not-found]

    return getattr(k_sampling, f"sample_{name}")


def sampler_object(name: str) -> KSAMPLER:
    """ComfyUI's sampler_object: the SAMPLER KSamplerSelect gives for `name`."""
    return ksampler(name)


def sample(
    model: Any,
    noise: torch.Tensor,
    positive: Any,
    negative: Any,
    cfg: float,
    device: Any,
    sampler: Any,
    sigmas: torch.Tensor,
    model_options: Any = None,
    latent_image: torch.Tensor | None = None,
    denoise_mask: torch.Tensor | None = None,
    callback: Any = None,
    disable_pbar: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """Classifier-free guided sampling of `latent_image` with a SAMPLER over `sigmas`."""
    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


# ComfyUI's scheduler functions by name, over diffgraph's (model_sampling, steps) schedules.
simple_scheduler = _schedulers.simple
ddim_scheduler = _schedulers.ddim_uniform
beta_scheduler = _schedulers.beta
linear_quadratic_schedule = _schedulers.linear_quadratic
kl_optimal_scheduler = _schedulers.kl_optimal_sigmas


def normal_scheduler(model_sampling: Any, steps: int, sgm: bool = False, floor: bool = False) -> torch.Tensor:
    return (_schedulers.sgm_uniform if sgm else _schedulers.normal)(model_sampling, steps)


sgm_uniform_scheduler = _partial(normal_scheduler, sgm=True)
cast_transformer_options = cast_to_load_options  # the older ComfyUI name
