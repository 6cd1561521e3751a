"""Sampling on MODEL handles: what the KSampler and custom-sampling nodes call.

The values that travel on the custom-sampling sockets are defined here: SAMPLER (a registered
`SamplerSpec`), SIGMAS (a 1-D float tensor), NOISE (`RandomNoise` / `DisabledNoise`) and GUIDER (`Guider`).
Noise is drawn from the seed as ComfyUI draws it (engine.diffusion.sampling.noise: the initial noise on the
CPU, ancestral per-step noise on the model's device). Progress goes to a `report(step, total, preview)`
function (ExecutionContext.progress) through one adapter, `StepReporter`, which the samplers call with
their `StepInfo`; `preview` is a zero-argument function rendering the step's preview image, called only
if the sink shows previews. An exception `report` raises (an interrupt) stops sampling and propagates.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.diffusion.models.latent_formats import latent_in
from engine.diffusion.sampling import ksampler, schedulers
from engine.diffusion.sampling.guidance import CFGDenoiser, prepare_denoise_mask
from engine.diffusion.sampling.previewers import LatentPreview
from engine.diffusion.sampling.registry import SamplerRegistry, SamplerSpec, SchedulerRegistry
from engine.diffusion.sampling.samplers._common import StepInfo
from engine.extensions import SamplerDeclaration, SchedulerDeclaration
from engine.handles.model import ModelHandle

Report = Callable[[int, int, Any], None]
Conditioning = Sequence[Sequence[Any]]


@dataclass
class SamplingLibrary:
    """The sampler and scheduler registries nodes choose from: one per runtime, built at start-up with
    the built-in entries; packs add theirs (`api.register_sampler`), which then appear in every sampler
    combo. Nodes reach it as `context.samplers`. The runtime builds it (engine.runtime.sampling_library);
    everything else is handed this one."""

    samplers: SamplerRegistry
    schedulers: SchedulerRegistry

    def sampler_names(self) -> list[str]:
        return self.samplers.names()

    def scheduler_names(self) -> list[str]:
        return self.schedulers.names()

    def sampler(self, name: str) -> SamplerSpec:
        return self.samplers.get(name)

    def add_sampler(self, declaration: SamplerDeclaration) -> None:
        d = declaration
        spec = SamplerSpec(
            d.name,
            d.function,
            d.noise,
            discard_penultimate_sigma=d.discard_penultimate_sigma,
            options=d.options,
        )
        self.samplers.register(spec)

    def add_scheduler(self, declaration: SchedulerDeclaration) -> None:
        self.schedulers.register(declaration.name, declaration.function)


# ---- progress -----------------------------------------------------------------------------------


class StepReporter:
    """The one adapter from the samplers' progress shape (`StepInfo`, 0-based) to the sink's
    `report(step, total, preview)` (1-based). The preview is passed unrendered, so only a sink that
    shows previews pays for the latent→RGB conversion. Also keeps the last clean-latent estimate
    (SamplerCustomAdvanced's `denoised_output`)."""

    def __init__(self, model: ModelHandle, report: Report | None) -> None:
        self.model = model
        self.report = report
        self.last_denoised: torch.Tensor | None = None

    def __call__(self, info: StepInfo) -> None:
        self.last_denoised = info.denoised
        if self.report is not None:
            model = self.model
            preview = LatentPreview(str(model.family), info.denoised, model.preview_image)
            self.report(info.index + 1, info.total, preview)


# ---- latents ------------------------------------------------------------------------------------


def _samples(latent: Mapping[str, Any]) -> torch.Tensor:
    samples = latent.get("samples") if isinstance(latent, Mapping) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise ValueError(
            "expected a LATENT (a dict with 'samples' of shape (batch, channels, height, width)), "
            f"got {type(latent).__name__}"
        )
    return samples


def _check_channels(model: ModelHandle, samples: torch.Tensor) -> None:
    if samples.shape[1] != model.latent_channels:
        raise ValueError(
            f"the latent has {samples.shape[1]} channels but the model {model.name} works on "
            f"{model.latent_channels}; use a latent made for this model family"
        )


def _with_samples(latent: Mapping[str, Any], samples: torch.Tensor) -> dict[str, Any]:
    out = dict(latent)
    out["samples"] = samples
    return out


# ---- KSampler -----------------------------------------------------------------------------------


def ksample(
    model: ModelHandle,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent: Mapping[str, Any],
    denoise: float = 1.0,
    add_noise: bool = True,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    report: Report | None = None,
    library: SamplingLibrary,
) -> dict[str, Any]:
    """KSampler / KSamplerAdvanced: returns a LATENT dict (the input's keys kept, samples replaced)."""
    samples = _samples(latent)
    _check_channels(model, samples)
    noise = None
    if add_noise:
        noise = ksampler.prepare_noise(samples.float().cpu(), seed, latent.get("batch_index"))
    device = model.device
    with model.use():
        out = ksampler.sample(
            model.diffusion_model(),
            None if noise is None else noise.to(device),
            steps,
            cfg,
            sampler_name,
            scheduler,
            positive,
            negative,
            samples.to(device, torch.float32),
            denoise=denoise,
            disable_noise=not add_noise,
            start_step=start_step,
            last_step=last_step,
            force_full_denoise=force_full_denoise,
            noise_mask=latent.get("noise_mask"),
            callback=StepReporter(model, report) if report is not None else None,
            seed=seed,
            samplers=library.samplers,
            schedulers=library.schedulers,
            model_options=model.sampling_options(),
        )
    return _with_samples(latent, out.to("cpu", torch.float32))


# ---- SIGMAS -------------------------------------------------------------------------------------


def scheduler_sigmas(
    model: ModelHandle,
    scheduler: str,
    steps: int,
    denoise: float = 1.0,
    *,
    library: SamplingLibrary,
) -> torch.Tensor:
    """BasicScheduler: `steps` sigmas of `scheduler` for the model (denoise < 1: the last part of a
    longer schedule; denoise 0: an empty tensor, ComfyUI's 'nothing to do')."""
    if denoise <= 0.0:
        return torch.zeros(0)
    return ksampler.ksampler_sigmas(
        model.model_sampling, scheduler, steps, denoise, schedulers=library.schedulers
    )


def karras_sigmas(steps: int, sigma_max: float, sigma_min: float, rho: float) -> torch.Tensor:
    return schedulers.karras_sigmas(steps, sigma_min, sigma_max, rho).float()


def exponential_sigmas(steps: int, sigma_max: float, sigma_min: float) -> torch.Tensor:
    return schedulers.exponential_sigmas(steps, sigma_min, sigma_max).float()


def sd_turbo_sigmas(model: ModelHandle, steps: int, denoise: float = 1.0) -> torch.Tensor:
    return schedulers.sd_turbo_sigmas(model.model_sampling, steps, denoise).float()


# ---- NOISE --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomNoise:
    """Initial noise from a seed (CPU generator; per batch index when the latent has a batch_index)."""

    seed: int

    def generate(self, latent: Mapping[str, Any]) -> torch.Tensor:
        samples = _samples(latent)
        return ksampler.prepare_noise(samples.float().cpu(), self.seed, latent.get("batch_index"))

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        """ComfyUI's name for `generate` (packs call it on any NOISE value)."""
        return self.generate(input_latent)


@dataclass(frozen=True)
class DisabledNoise:
    """No initial noise (the latent is sampled as it is: second pass of a split schedule)."""

    seed: int = 0

    def generate(self, latent: Mapping[str, Any]) -> torch.Tensor:
        return torch.zeros_like(_samples(latent), dtype=torch.float32, device="cpu")

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        """ComfyUI's name for `generate` (packs call it on any NOISE value)."""
        return self.generate(input_latent)


def initial_noise(noise: Any, latent: Mapping[str, Any]) -> torch.Tensor:
    """The initial noise of a NOISE value: diffgraph's `generate(latent)`, or ComfyUI's
    `generate_noise(latent)` that packs' own noise objects have (the LATENT dict in both)."""
    generate = getattr(noise, "generate", None)
    if not callable(generate):
        generate = getattr(noise, "generate_noise", None)
    if not callable(generate):
        raise TypeError(
            f"a NOISE value needs generate(latent) or generate_noise(latent); got {type(noise).__name__}"
        )
    out = generate(latent)
    if not isinstance(out, torch.Tensor) or out.shape != _samples(latent).shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the NOISE value made {shape}, not noise shaped like the latent")
    return out


def with_sample_sigmas(options: Mapping[str, Any], sigmas: torch.Tensor | None) -> dict[str, Any]:
    """A copy of a MODEL's sampling options whose transformer_options carry the run's schedule as
    "sample_sigmas", as ComfyUI's sampler sets it for every run (patches and pack guiders read it); the
    model's own dicts are not changed."""
    out = dict(options)
    if sigmas is not None:
        transformer_options = dict(out.get("transformer_options") or {})
        transformer_options["sample_sigmas"] = sigmas
        out["transformer_options"] = transformer_options
    return out


# ---- GUIDER -------------------------------------------------------------------------------------


class _DualCFG:
    """ComfyUI's DualCFGGuider. "regular": neg + cfg2·(cond2 − neg) + cfg1·(cond1 − cond2);
    "nested": neg + cfg2·((cond2 + cfg1·(cond1 − cond2)) − neg)."""

    def __init__(self, parts: list[CFGDenoiser], cfg1: float, cfg2: float, style: str) -> None:
        self.parts = parts
        self.cfg1, self.cfg2, self.style = cfg1, cfg2, style

    @property
    def model_sampling(self) -> Any:
        return self.parts[0].model_sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c1, c2, neg = (p(x, sigma) for p in self.parts)
        if self.style == "nested":
            inner = c2 + self.cfg1 * (c1 - c2)
            return neg + self.cfg2 * (inner - neg)
        return neg + self.cfg2 * (c2 - neg) + self.cfg1 * (c1 - c2)


@dataclass
class Guider:
    """A GUIDER: a model plus named conditionings and guidance scales.

    kind "basic": conds["positive"] only (no guidance); "cfg": positive/negative with `cfg`; "dual":
    cond1/cond2/negative with `cfg` (cfg_conds) and `cfg2` (cfg_cond2_negative) in `style`."""

    model: ModelHandle
    kind: str
    conds: dict[str, Conditioning]
    cfg: float = 1.0
    cfg2: float = 1.0
    style: str = "regular"

    def denoiser(
        self,
        like: torch.Tensor,
        *,
        latent_image: torch.Tensor,
        denoise_mask: torch.Tensor | None,
        sigmas: torch.Tensor | None = None,
        seed: int | None = None,
    ) -> Any:
        """D(x, sigma) for this guider; `sigmas`, the run's schedule, reaches the model's patches as
        transformer_options["sample_sigmas"]; `seed`, the noise seed, the conditioning's noise (unCLIP)."""
        dm = self.model.diffusion_model()
        dm.seed = seed
        kw: dict[str, Any] = {
            "like": like,
            "latent_image": latent_image,
            "denoise_mask": denoise_mask,
            "model_options": with_sample_sigmas(self.model.sampling_options(), sigmas),
        }
        if self.kind == "basic":
            return CFGDenoiser(dm, self.conds["positive"], None, 1.0, **kw)
        if self.kind == "cfg":
            negative = self.conds["negative"]
            return CFGDenoiser(dm, self.conds["positive"], negative, self.cfg, **kw)
        if self.kind == "dual":
            parts = [CFGDenoiser(dm, self.conds[k], None, 1.0, **kw) for k in ("cond1", "cond2", "negative")]
            return _DualCFG(parts, self.cfg, self.cfg2, self.style)
        raise ValueError(f"unknown guider kind {self.kind!r}")


def _guider_denoiser(
    guider: Any, lat: torch.Tensor, mask: torch.Tensor | None, sigmas: torch.Tensor, seed: int
) -> Any:
    """The guider's D(x, sigma), given the schedule and the noise seed where its `denoiser` takes them (a
    guider written for the older interface without them still runs)."""
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(guider.denoiser).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it without the schedule
        params = {}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    extra: dict[str, Any] = {"sigmas": sigmas} if "sigmas" in params or var_kw else {}
    if "seed" in params or var_kw:
        extra["seed"] = seed
    return guider.denoiser(lat, latent_image=lat, denoise_mask=mask, **extra)


def custom_sample(
    noise: Any,
    guider: Guider,
    sampler: SamplerSpec,
    sigmas: torch.Tensor,
    latent: Mapping[str, Any],
    *,
    report: Report | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """SamplerCustomAdvanced: (output LATENT, denoised_output LATENT). `denoised_output` is the model's
    last clean-latent estimate (equal to the output when no step ran). The LATENT's raw samples go into
    the model's space with its latent format (an all-zero latent as is) and both results come back out,
    as ComfyUI does; the noise is not scaled. `noise` is a NOISE value: diffgraph's or a pack's with
    ComfyUI's `generate_noise` (and `seed`, ancestral samplers' per-step noise seed)."""
    model = guider.model
    samples = _samples(latent)
    _check_channels(model, samples)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if sigmas.numel() < 2:
        return _with_samples(latent, samples.clone()), _with_samples(latent, samples.clone())
    initial = initial_noise(noise, latent)
    device = model.device
    reporter = StepReporter(model, report)
    fmt = model.latent_format
    with model.use():
        lat = latent_in(fmt, samples.to(device, torch.float32))
        mask = latent.get("noise_mask")
        mask = prepare_denoise_mask(mask, lat) if mask is not None else None
        seed = int(getattr(noise, "seed", 0))
        den = _guider_denoiser(guider, lat, mask, sigmas.to(device), seed)
        out = ksampler.sample_custom(
            den, sampler, sigmas, initial.to(device), lat, reporter, noise_mask=mask, seed=seed
        )
    out = fmt.process_out(out.to("cpu", torch.float32))
    last = reporter.last_denoised
    denoised = fmt.process_out(last.to("cpu", torch.float32)) if last is not None else out.clone()
    return _with_samples(latent, out), _with_samples(latent, denoised)


def split_sigmas(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SplitSigmas: sigmas[: step + 1] and sigmas[step:] (they share the boundary sigma)."""
    return sigmas[: step + 1], sigmas[step:]


def flip_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """FlipSigmas: reversed; a leading 0 becomes 1e-4 so the first step has a nonzero sigma (ComfyUI)."""
    if sigmas.numel() == 0:
        return sigmas
    out = sigmas.flip(0).clone()
    if math.isclose(float(out[0]), 0.0):
        out[0] = 1e-4
    return out


# ---- SAMPLER / SIGMAS for the custom-sampling option nodes ----------------------------------------


def beta_sigmas(model: ModelHandle, steps: int, alpha: float, beta: float) -> torch.Tensor:
    """BetaSamplingScheduler: the beta schedule over the model's timesteps with Beta(alpha, beta)."""
    return schedulers.beta(model.model_sampling, steps, alpha, beta).float()


def lcm_upscale_sampler(
    resize: Callable[[torch.Tensor, int, int], torch.Tensor], total_upscale: float, upscale_steps: int | None
) -> SamplerSpec:
    """SamplerLCMUpscale's SAMPLER: LCM that resizes its estimate with `resize` over the first steps."""
    from engine.diffusion.sampling.samplers.extra import sample_lcm_upscale

    options = (("resize", resize), ("total_upscale", total_upscale), ("upscale_steps", upscale_steps))
    return SamplerSpec("lcm_upscale", sample_lcm_upscale, "gaussian", options=options)


def euler_cfg_pp_alternative_sampler() -> SamplerSpec:
    """SamplerEulerCFG++ "alternative": Euler along (x − 2·D_cfg + D_uncond)/sigma."""
    from engine.diffusion.sampling.samplers.extra import sample_euler_cfg_pp_alternative

    return SamplerSpec("euler_cfg_pp_alternative", sample_euler_cfg_pp_alternative)
