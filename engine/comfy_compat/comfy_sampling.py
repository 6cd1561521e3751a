"""What comfy.samplers / comfy.sample run: ComfyUI's KSampler, CFGGuider, calculate_sigmas, sample and
sample_custom over diffgraph's MODEL handles, guidance (engine.diffusion.sampling.guidance) and the
runtime's sampling library.

Values keep ComfyUI's shapes: noise and latents are (B, C, h, w) tensors, a sampler is a SAMPLER value
(a `SamplerSpec`, e.g. comfy.samplers.KSAMPLER / ksampler(name)), `callback(step, x0, x, total_steps)`.
A CFGGuider here is also diffgraph's GUIDER value (it has `model` and `denoiser(...)`), so a pack's guider
runs in diffgraph's SamplerCustomAdvanced, and a subclass overriding `predict_noise` is honoured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from engine.comfy_compat.sampling_bridge import ComfyKSampler
from engine.diffusion.models.latent_formats import IDENTITY, latent_in
from engine.diffusion.sampling import ksampler as ks
from engine.diffusion.sampling.guidance import CFGDenoiser, prepare_denoise_mask
from engine.diffusion.sampling.registry import SamplerSpec
from engine.diffusion.sampling.samplers._common import StepInfo
from engine.handles.comfy_surface.base_model import BaseModel
from engine.handles.comfy_surface.base_model import calc_cond_batch as model_calc_cond_batch
from engine.handles.sampling import with_sample_sigmas

ComfyStepCallback = Callable[[int, torch.Tensor, torch.Tensor, int], Any]
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}


def library_of(services: Mapping[str, Any]) -> Any:
    from engine.execution.context import SAMPLERS

    return services[SAMPLERS]


def model_options_of(model: Any) -> dict[str, Any]:
    """The options sampling honours for a MODEL (the handle's `sampling_options()` where it has one)."""
    options = getattr(model, "sampling_options", None)
    if callable(options):
        return dict(options())
    return dict(getattr(model, "model_options", None) or {})


def model_sampling_of(model: Any) -> Any:
    getter = getattr(model, "get_model_object", None)
    if callable(getter):
        try:
            return getter("model_sampling")
        except (AttributeError, KeyError):
            pass
    return model.model_sampling


def sampler_spec(library: Any, sampler: Any) -> SamplerSpec:
    """A SAMPLER value or a sampler name as the spec to run."""
    if isinstance(sampler, str):
        return library.sampler(sampler)  # type: ignore[no-any-return]
    return sampler  # type: ignore[no-any-return]


def step_adapter(callback: ComfyStepCallback | None) -> Callable[[StepInfo], None] | None:
    """ComfyUI's sampling callback `(step, x0, x, total_steps)` as diffgraph's StepCallback."""
    if callback is None:
        return None

    def step(info: StepInfo) -> None:
        callback(info.index, info.denoised, info.x, info.total)

    return step


def with_running_progress(callback: ComfyStepCallback | None) -> Callable[[StepInfo], None] | None:
    """The step callback: the caller's, and the running node's progress (ComfyUI's pbar)."""
    from engine.execution.context import running_context

    context = running_context()
    mine = step_adapter(callback)
    if context is None:
        return mine

    def step(info: StepInfo) -> None:
        if mine is not None:
            mine(info)
        context.progress(info.index + 1, info.total)

    return step


def _prepared_mask(denoise_mask: torch.Tensor | None, latent: torch.Tensor) -> torch.Tensor | None:
    return prepare_denoise_mask(denoise_mask, latent) if denoise_mask is not None else None


def run_denoiser(
    model: Any,
    make_denoiser: Callable[[torch.Tensor, torch.Tensor | None], Any],
    sampler: SamplerSpec,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    latent_image: torch.Tensor | None,
    *,
    denoise_mask: torch.Tensor | None = None,
    callback: ComfyStepCallback | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Sample with `make_denoiser(latent, mask)` (built while the model is loaded); a float32 CPU result.
    The raw latent goes into the model's space and the result back out (ComfyUI's CFGGuider.inner_sample:
    process_latent_in unless the latent is all zeros, process_latent_out on the samples)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    latent = latent_image if latent_image is not None else torch.zeros_like(noise)
    if sigmas.numel() < 2:
        return latent.clone()
    device = model.device
    fmt = getattr(model, "latent_format", IDENTITY)
    with model.use():
        lat = latent_in(fmt, latent.to(device, torch.float32))
        mask = _prepared_mask(denoise_mask, lat)
        den = make_denoiser(lat, mask)
        out = ks.sample_custom(
            den,
            sampler,
            sigmas,
            noise.to(device, torch.float32),
            lat,
            with_running_progress(callback),
            noise_mask=mask,
            seed=int(seed or 0),
            model_sampling=getattr(den, "model_sampling", None) or model_sampling_of(model),
        )
    return fmt.process_out(out.to("cpu", torch.float32))


def guided(
    model: Any,
    positive: Any,
    negative: Any,
    cfg: float,
    lat: torch.Tensor,
    mask: torch.Tensor | None,
    sigmas: torch.Tensor | None = None,
) -> CFGDenoiser:
    """diffgraph's classifier-free guided denoiser for a MODEL (loaded by the caller) and a latent;
    `sigmas`, the run's schedule, goes to transformer_options["sample_sigmas"] as ComfyUI's sampler puts it."""
    return CFGDenoiser(
        model.diffusion_model(),
        positive,
        negative,
        cfg,
        like=lat,
        latent_image=lat,
        denoise_mask=mask,
        model_options=with_sample_sigmas(model_options_of(model), sigmas),
    )


def cfg_denoiser(
    model: Any, positive: Any, negative: Any, cfg: float, sigmas: torch.Tensor | None = None
) -> Callable[..., CFGDenoiser]:
    def make(lat: torch.Tensor, mask: torch.Tensor | None) -> CFGDenoiser:
        return guided(
            model, positive, negative, cfg, lat, mask, None if sigmas is None else sigmas.to(lat.device)
        )

    return make


# ---- calculate_sigmas and KSampler ---------------------------------------------------------------------


def calculate_sigmas(library: Any, model_sampling: Any, scheduler_name: str, steps: int) -> torch.Tensor:
    """ComfyUI's comfy.samplers.calculate_sigmas: `steps` sigmas of a scheduler of the runtime's library."""
    if scheduler_name not in library.schedulers:
        raise ValueError(f"error invalid scheduler {scheduler_name}")
    return library.schedulers.sigmas(scheduler_name, model_sampling, int(steps))  # type: ignore[no-any-return]


class KSampler:
    """ComfyUI's comfy.samplers.KSampler(model, steps, device, sampler, scheduler, denoise, model_options):
    the sigmas of a schedule (with the denoise fraction) and `sample(...)` with them."""

    def __init__(
        self,
        library: Any,
        model: Any,
        steps: int,
        device: Any = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        denoise: float | None = None,
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.library = library
        self.model = model
        self.device = device
        names, schedulers = library.sampler_names(), library.scheduler_names()
        # An unknown name falls back to the first entry, as ComfyUI's KSampler does.
        self.sampler: str = sampler if sampler is not None and sampler in names else names[0]
        self.scheduler: str = (
            scheduler if scheduler is not None and scheduler in schedulers else schedulers[0]
        )
        self.denoise = denoise
        self.model_options = dict(model_options or {})
        self.set_steps(steps, denoise)

    def calculate_sigmas(self, steps: int) -> torch.Tensor:
        spec = self.library.sampler(self.sampler)
        return ks.calculate_sigmas(
            model_sampling_of(self.model),
            self.scheduler,
            steps,
            schedulers=self.library.schedulers,
            sampler=spec,
        )

    def set_steps(self, steps: int, denoise: float | None = None) -> None:
        self.steps = steps
        if denoise is None or denoise > 0.9999:
            self.sigmas = self.calculate_sigmas(steps)
        elif denoise <= 0.0:
            self.sigmas = torch.FloatTensor([])
        else:
            self.sigmas = self.calculate_sigmas(int(steps / denoise))[-(steps + 1) :]

    def sample(
        self,
        noise: torch.Tensor,
        positive: Any,
        negative: Any,
        cfg: float,
        latent_image: torch.Tensor | None = None,
        start_step: int | None = None,
        last_step: int | None = None,
        force_full_denoise: bool = False,
        denoise_mask: torch.Tensor | None = None,
        sigmas: torch.Tensor | None = None,
        callback: ComfyStepCallback | None = None,
        disable_pbar: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        sigmas = self.sigmas if sigmas is None else sigmas
        if last_step is not None and last_step < len(sigmas) - 1:
            sigmas = sigmas[: last_step + 1].clone()
            if force_full_denoise:
                sigmas[-1] = 0
        if start_step is not None:
            if start_step < len(sigmas) - 1:
                sigmas = sigmas[start_step:]
            else:
                return latent_image if latent_image is not None else torch.zeros_like(noise)
        spec = self.library.sampler(self.sampler)
        return run_denoiser(
            self.model,
            cfg_denoiser(self.model, positive, negative, cfg, torch.as_tensor(sigmas, dtype=torch.float32)),
            spec,
            sigmas,
            noise,
            latent_image,
            denoise_mask=denoise_mask,
            callback=callback,
            seed=seed,
        )


# ---- CFGGuider ---------------------------------------------------------------------------------------


class CFGGuider:
    """ComfyUI's comfy.samplers.CFGGuider, and a GUIDER value for diffgraph's SamplerCustomAdvanced.

    `predict_noise(x, timestep, model_options, seed)` returns the guided x0 estimate (ComfyUI's name);
    subclasses override it and call `calc_cond_batch(self.inner_model, [...], x, timestep, ...)` /
    `sampling_function(...)`, which work on `self.inner_model` while sampling runs."""

    def __init__(self, model_patcher: Any) -> None:
        self.model_patcher = model_patcher
        self.model = model_patcher
        self.model_options = getattr(model_patcher, "model_options", {})
        self.original_conds: dict[str, Any] = {}
        self.cfg = 1.0
        self.inner_model: Any = None
        self.conds: dict[str, Any] = {}

    def set_conds(self, positive: Any, negative: Any) -> None:
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg: float) -> None:
        self.cfg = cfg

    def inner_set_conds(self, conds: Mapping[str, Any]) -> None:
        for key, value in conds.items():
            self.original_conds[key] = value

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.predict_noise(*args, **kwargs)

    def predict_noise(
        self, x: torch.Tensor, timestep: torch.Tensor, model_options: Any = None, seed: Any = None
    ) -> torch.Tensor:
        return sampling_function(
            self.inner_model,
            x,
            timestep,
            self.conds.get("negative"),
            self.conds.get("positive"),
            self.cfg,
            model_options or {},
            seed,
        )

    def _overridden(self) -> bool:
        return type(self).predict_noise is not CFGGuider.predict_noise

    def denoiser(
        self,
        like: torch.Tensor,
        *,
        latent_image: torch.Tensor,
        denoise_mask: torch.Tensor | None,
        sigmas: torch.Tensor | None = None,
    ) -> Any:
        """diffgraph's GUIDER interface: D(x, sigma) for this guider (the model is loaded by the caller).
        `sigmas`, the schedule, reaches predict_noise as transformer_options["sample_sigmas"] (ComfyUI's)."""
        self.conds = dict(self.original_conds)
        self.inner_model = _InnerModel(self.model, like, latent_image, denoise_mask)
        if not self._overridden():
            positive = self.conds.get("positive")
            negative = self.conds.get("negative")
            cfg = self.cfg if negative is not None else 1.0
            return cfg_denoiser(self.model, positive, negative, cfg, sigmas)(latent_image, denoise_mask)
        options = with_sample_sigmas(self.model_options, sigmas)
        return _PredictNoise(self, model_sampling_of(self.model), options)

    def sample(
        self,
        noise: torch.Tensor,
        latent_image: torch.Tensor | None,
        sampler: Any,
        sigmas: torch.Tensor,
        denoise_mask: torch.Tensor | None = None,
        callback: ComfyStepCallback | None = None,
        disable_pbar: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        if sigmas.shape[-1] == 0:
            return latent_image if latent_image is not None else torch.zeros_like(noise)

        def make(lat: torch.Tensor, mask: torch.Tensor | None) -> Any:
            return self.denoiser(lat, latent_image=lat, denoise_mask=mask, sigmas=sigmas.to(lat.device))

        spec = sampler if isinstance(sampler, SamplerSpec) else ComfyKSampler(sampler)
        return run_denoiser(
            self.model,
            make,
            spec,
            sigmas,
            noise,
            latent_image,
            denoise_mask=denoise_mask,
            callback=callback,
            seed=seed,
        )


class _PredictNoise:
    def __init__(self, guider: CFGGuider, model_sampling: Any, model_options: dict[str, Any]) -> None:
        self.guider = guider
        self.model_sampling = model_sampling
        self.model_options = model_options

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.guider.predict_noise(x, sigma, self.model_options, None)


class _InnerModel:
    """`guider.inner_model` while sampling: what calc_cond_batch needs to evaluate conditionings."""

    def __init__(
        self, model: Any, like: torch.Tensor, latent: torch.Tensor, mask: torch.Tensor | None
    ) -> None:
        self.handle = model
        self.like, self.latent, self.mask = like, latent, mask
        self.model_sampling = model_sampling_of(model)
        self._denoisers: dict[int, tuple[Any, CFGDenoiser]] = {}

    def denoiser(self, cond: Any) -> CFGDenoiser:
        """The x0 estimate of one CONDITIONING (prepared once per conditioning object)."""
        known = self._denoisers.get(id(cond))
        if known is not None and known[0] is cond:
            return known[1]
        den = guided(self.handle, cond, None, 1.0, self.latent, self.mask)
        self._denoisers[id(cond)] = (cond, den)
        return den


def calc_cond_batch(
    model: Any, conds: Sequence[Any], x: torch.Tensor, timestep: torch.Tensor, model_options: Any = None
) -> list[torch.Tensor]:
    """ComfyUI's calc_cond_batch: the x0 estimate for each CONDITIONING in `conds`; a None entry gives
    zeros, as in ComfyUI (nothing was accumulated for it). `model` is a guider's inner_model while it
    samples, or the model object guidance hooks receive (args["model"], a BaseModel): post-CFG functions
    such as perturbed-attention guidance evaluate a conditioning again with their own patches."""
    if isinstance(model, BaseModel):
        return model_calc_cond_batch(model, conds, x, timestep, model_options)
    if not isinstance(model, _InnerModel):
        raise TypeError(
            "calc_cond_batch works on a guider's inner_model while it samples, or on the model a guidance "
            f"hook receives; got {type(model).__name__}"
        )
    out: list[torch.Tensor] = []
    for cond in conds:
        if cond is None:
            out.append(torch.zeros_like(x))
            continue
        out.append(model.denoiser(cond)(x, timestep))
    return out


def sampling_function(
    model: Any,
    x: torch.Tensor,
    timestep: torch.Tensor,
    uncond: Any,
    cond: Any,
    cond_scale: float,
    model_options: Any = None,
    seed: Any = None,
) -> torch.Tensor:
    """ComfyUI's sampling_function: classifier-free guidance of `cond` against `uncond`."""
    if not isinstance(model, _InnerModel):
        raise TypeError("sampling_function works on a guider's inner_model while it samples")
    den = guided(
        model.handle, cond, uncond, cond_scale if uncond is not None else 1.0, model.latent, model.mask
    )
    return den(x, timestep)


def cfg_function(
    model: Any,
    cond_pred: torch.Tensor,
    uncond_pred: torch.Tensor,
    cond_scale: float,
    x: torch.Tensor,
    timestep: torch.Tensor,
    model_options: Mapping[str, Any] | None = None,
    cond: Any = None,
    uncond: Any = None,
) -> torch.Tensor:
    """ComfyUI's cfg_function: uncond + (cond − uncond)·scale, or the model's "sampler_cfg_function" (on
    noise predictions x − denoised), then every "sampler_post_cfg_function"."""
    options = dict(model_options or {})
    custom = options.get("sampler_cfg_function")
    if custom is not None:
        args = {
            "cond": x - cond_pred,
            "uncond": x - uncond_pred,
            "cond_scale": cond_scale,
            "timestep": timestep,
            "input": x,
            "sigma": timestep,
            "cond_denoised": cond_pred,
            "uncond_denoised": uncond_pred,
            "model": model,
            "model_options": options,
            "input_cond": cond,
            "input_uncond": uncond,
        }
        result = x - custom(args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for post in options.get("sampler_post_cfg_function", []):
        result = post(
            {
                "denoised": result,
                "cond": cond,
                "uncond": uncond,
                "cond_scale": cond_scale,
                "model": model,
                "uncond_denoised": uncond_pred,
                "cond_denoised": cond_pred,
                "sigma": timestep,
                "model_options": options,
                "input": x,
            }
        )
    return result


def _cast_entries(container: Any, casts: list[Any]) -> None:
    """Call `.to(cast)` on every object in a list / dict value of `container` that has one."""
    items = container.items() if isinstance(container, dict) else enumerate(container)
    for key, value in list(items):
        if isinstance(value, dict | list):
            _cast_entries(value, casts)
        elif hasattr(value, "to") and not isinstance(value, type):
            for cast in casts:
                value = value.to(cast)
            container[key] = value


def cast_to_load_options(options: Mapping[str, Any] | None, device: Any = None, dtype: Any = None) -> None:
    """ComfyUI's cast_to_load_options / cast_transformer_options: move the patches, replacements,
    wrappers and callbacks in `options` (a model_options' "to_load_options", or transformer_options) that
    can move (`.to`) to `device` / `dtype`, in place."""
    if options is None:
        return
    casts = [c for c in (device, dtype) if c is not None]
    if not casts:
        return
    target = options.get("to_load_options", options)
    for name in ("patches", "patches_replace", "wrappers", "callbacks"):
        if isinstance(target, dict) and name in target:
            _cast_entries(target[name], casts)
