"""ComfyUI's sampler conventions over diffgraph's sampling library (what comfy.samplers, comfy.sample and
comfy.k_diffusion.sampling are built from).

Two sampler conventions meet here:

* diffgraph's: `fn(denoiser, x, sigmas, *, noise=NoiseSource, callback=StepCallback, **options)` with
  `denoiser(x, sigma)`, registered as a `SamplerSpec` in the runtime's `SamplingLibrary`;
* ComfyUI's k-diffusion one: `fn(model, x, sigmas, extra_args=None, callback=None, disable=None,
  noise_sampler=None, **options)` with `model(x, sigma, **extra_args)`, `extra_args["seed"]` seeding the
  noise the function draws itself, and `callback({"x", "i", "sigma", "sigma_hat", "denoised"})`.

`comfy_style(spec)` turns one of ours into ComfyUI's shape (comfy.k_diffusion.sampling.sample_euler ...);
`ComfyKSampler` (ComfyUI's KSAMPLER) is a `SamplerSpec` running a ComfyUI-shaped function, so a sampler a
pack builds travels on SAMPLER sockets into diffgraph's SamplerCustom, and gets the seed it expects.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch

from engine.diffusion.sampling.model_sampling import is_max_denoise
from engine.diffusion.sampling.noise import GaussianNoise
from engine.diffusion.sampling.registry import SamplerSpec
from engine.diffusion.sampling.samplers._common import StepInfo

log = logging.getLogger(__name__)

ComfyCallback = Callable[[dict[str, Any]], Any]


# ---- denoiser / model shapes -----------------------------------------------------------------------


class _Holder:
    """An attribute bag for the `model.inner_model.inner_model.model_sampling` chain ComfyUI samplers
    follow (KSamplerX0Inpaint -> CFGGuider -> BaseModel)."""

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


class ComfyModel:
    """A diffgraph denoiser as the `model` a ComfyUI sampler function calls: `model(x, sigma, **extra)`
    (the extra arguments - model_options, seed, denoise_mask - are the guider's business here)."""

    def __init__(self, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.denoiser = denoiser
        model_sampling = getattr(denoiser, "model_sampling", None)
        self.inner_model = _Holder(
            inner_model=_Holder(model_sampling=model_sampling), model_sampling=model_sampling
        )

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_extra: Any) -> torch.Tensor:
        return self.denoiser(x, sigma)


def comfy_step(info: StepInfo, sigmas_like: torch.Tensor) -> dict[str, Any]:
    """A diffgraph StepInfo as ComfyUI's k-diffusion callback dict."""
    sigma = torch.tensor(info.sigma, dtype=sigmas_like.dtype)
    return {"x": info.x, "i": info.index, "sigma": sigma, "sigma_hat": sigma, "denoised": info.denoised}


class SeededNoise(GaussianNoise):
    """The per-step noise source diffgraph hands a ComfyUI-shaped sampler: it also carries the seed, which
    the function receives as `extra_args["seed"]` and draws its own noise from, as in ComfyUI."""

    def __init__(self, x: torch.Tensor, seed: int) -> None:
        super().__init__(x.shape, seed, dtype=x.dtype, device=x.device)
        self.seed = seed


# ---- ours in ComfyUI's shape -----------------------------------------------------------------------


def _accepted_options(fn: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    dropped = [k for k in options if k not in params]
    if dropped:
        log.debug("sampler options %s are not used by %s", dropped, getattr(fn, "__name__", fn))
    return {k: v for k, v in options.items() if k in params}


def comfy_style(spec: SamplerSpec) -> Callable[..., torch.Tensor]:
    """`spec` as a ComfyUI k-diffusion sampler function (comfy.k_diffusion.sampling.sample_<name>)."""

    def sample(
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigmas: torch.Tensor,
        extra_args: Mapping[str, Any] | None = None,
        callback: ComfyCallback | None = None,
        disable: bool | None = None,
        noise_sampler: Callable[[Any, Any], torch.Tensor] | None = None,
        **options: Any,
    ) -> torch.Tensor:
        extra = dict(extra_args or {})

        def denoiser(xx: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return model(xx, sigma, **extra)

        if noise_sampler is not None:
            noise: Any = noise_sampler
        else:
            seed = extra.get("seed")
            noise = spec.make_noise(x, sigmas, 0 if seed is None else int(seed))
        step = None if callback is None else (lambda info: callback(comfy_step(info, sigmas)))
        opts = _accepted_options(spec.fn, {**dict(spec.options), **options})
        return spec.fn(denoiser, x, sigmas, noise=noise, callback=step, **opts)

    sample.__name__ = f"sample_{spec.name}"
    sample.__qualname__ = sample.__name__
    sample.__doc__ = f"diffgraph's {spec.name!r} sampler in ComfyUI's k-diffusion calling convention."
    return sample


# ---- ComfyUI's KSAMPLER: theirs as one of ours -----------------------------------------------------


def _run_comfy_function(
    function: Callable[..., torch.Tensor], extra_options: Mapping[str, Any]
) -> Callable[..., torch.Tensor]:
    def fn(
        denoiser: Any, x: torch.Tensor, sigmas: torch.Tensor, *, noise: Any = None, callback: Any = None
    ) -> torch.Tensor:
        seed = getattr(noise, "seed", None)
        extra_args: dict[str, Any] = {"seed": seed, "model_options": {}, "denoise_mask": None}
        total = len(sigmas) - 1

        def k_callback(d: Mapping[str, Any]) -> None:
            if callback is not None:
                sigma = float(d.get("sigma", 0.0))
                index = int(d["i"])
                nxt = float(sigmas[index + 1]) if index + 1 < len(sigmas) else 0.0
                callback(StepInfo(index, total, d["x"], d["denoised"], sigma, nxt))

        return function(
            ComfyModel(denoiser),
            x,
            sigmas,
            extra_args=extra_args,
            callback=k_callback,
            disable=True,
            **dict(extra_options),
        )

    return fn


class ComfyKSampler(SamplerSpec):
    """ComfyUI's KSAMPLER(sampler_function, extra_options, inpaint_options), usable wherever diffgraph
    takes a SAMPLER: the function gets ComfyUI's arguments (the seed in `extra_args`, its own noise).

    `direct`: for one of diffgraph's own samplers (comfy.samplers.ksampler("euler")), run that spec
    directly (exact noise, no double adaptation); `sampler_function` is then its ComfyUI-shaped twin."""

    sampler_function: Callable[..., torch.Tensor]
    extra_options: dict[str, Any]
    inpaint_options: dict[str, Any]
    direct: SamplerSpec | None

    def __init__(
        self,
        sampler_function: Callable[..., torch.Tensor],
        extra_options: Mapping[str, Any] | None = None,
        inpaint_options: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        direct: SamplerSpec | None = None,
    ) -> None:
        extra = dict(extra_options or {})
        inpaint = dict(inpaint_options or {})
        label = name or str(getattr(sampler_function, "__name__", "sampler")).removeprefix("sample_")
        if direct is not None:
            spec = replace(direct, options=tuple({**dict(direct.options), **extra}.items()))
            super().__init__(
                label,
                spec.fn,
                spec.noise,
                discard_penultimate_sigma=spec.discard_penultimate_sigma,
                options=spec.options,
                noise_on_device=spec.noise_on_device,
                random_inpaint_noise=spec.random_inpaint_noise or bool(inpaint.get("random")),
            )
        else:
            super().__init__(
                label,
                _run_comfy_function(sampler_function, extra),
                "gaussian",
                random_inpaint_noise=bool(inpaint.get("random")),
            )
        object.__setattr__(self, "sampler_function", sampler_function)
        object.__setattr__(self, "extra_options", extra)
        object.__setattr__(self, "inpaint_options", inpaint)
        object.__setattr__(self, "direct", direct)

    def make_noise(self, x: torch.Tensor, sigmas: torch.Tensor, seed: Any) -> Any:
        if self.direct is not None:
            return super().make_noise(x, sigmas, seed)
        return SeededNoise(x, int(seed) if isinstance(seed, int) else 0)

    def max_denoise(self, model_wrap: Any, sigmas: torch.Tensor) -> bool:
        """ComfyUI's Sampler.max_denoise: whether sampling starts at the top of the schedule."""
        ms = _model_sampling_of(model_wrap)
        return bool(is_max_denoise(ms, sigmas)) if ms is not None else False

    def sample(
        self,
        model_wrap: Any,
        sigmas: torch.Tensor,
        extra_args: Mapping[str, Any],
        callback: Callable[..., Any] | None,
        noise: torch.Tensor,
        latent_image: torch.Tensor | None = None,
        denoise_mask: torch.Tensor | None = None,
        disable_pbar: bool = False,
    ) -> torch.Tensor:
        """ComfyUI's KSAMPLER.sample: noise the latent to sigmas[0], run, undo the noise scaling. `callback`
        is ComfyUI's `(step, x0, x, total_steps)`."""
        extra = dict(extra_args)
        ms = _model_sampling_of(model_wrap)
        latent = latent_image if latent_image is not None else torch.zeros_like(noise)

        def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return model_wrap(x, sigma, **extra)  # type: ignore[no-any-return]

        x = ms.noise_scaling(sigmas[0], noise, latent, bool(is_max_denoise(ms, sigmas))) if ms else noise
        step = None
        if callback is not None:

            def step(info: StepInfo) -> None:
                callback(info.index, info.denoised, info.x, info.total)

        seed = extra.get("seed")
        source = self.make_noise(x, sigmas, int(seed) if seed is not None else 0)
        out = self(denoiser, x, sigmas, noise=source, callback=step)
        return ms.inverse_noise_scaling(sigmas[-1], out) if ms else out


def _model_sampling_of(model_wrap: Any) -> Any:
    for path in (("inner_model", "model_sampling"), ("model_sampling",), ("inner_model", "inner_model")):
        obj = model_wrap
        for part in path:
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "noise_scaling"):
            return obj
    return None


# ---- live name lists -------------------------------------------------------------------------------


class LiveNames(list):  # type: ignore[type-arg]
    """A list of names that mirrors a runtime registry (KSampler.SAMPLERS, SCHEDULER_NAMES...): it is
    refreshed from `names()` whenever it is read, and adding a name (`append`, `extend`, `insert`, `+=`)
    calls `add(name)`, which registers it with the runtime. ComfyUI packs extend these lists at import
    time to add samplers and schedulers."""

    def __init__(self, names: Callable[[], list[str]], add: Callable[[str], None]) -> None:
        super().__init__(names())
        self._names = names
        self._add = add

    def _sync(self) -> LiveNames:
        current = self._names()
        if list.__len__(self) != len(current) or list(list.__iter__(self)) != current:
            list.__init__(self, current)
        return self

    def _register(self, names: Iterable[Any]) -> None:
        for name in names:
            if str(name) not in self._names():
                self._add(str(name))
        self._sync()

    def append(self, name: Any) -> None:
        self._register([name])

    def extend(self, names: Iterable[Any]) -> None:
        self._register(list(names))

    def insert(self, index: Any, name: Any) -> None:  # order is the registry's: added names come last
        self._register([name])

    def __iadd__(self, names: Iterable[Any]) -> LiveNames:  # type: ignore[override,misc]
        self._register(list(names))
        return self

    def remove(self, name: Any) -> None:
        log.warning("a pack removed %r from a sampler/scheduler list; diffgraph keeps it registered", name)

    def __iter__(self) -> Any:
        return list.__iter__(self._sync())

    def __len__(self) -> int:
        return list.__len__(self._sync())

    def __getitem__(self, index: Any) -> Any:
        return list.__getitem__(self._sync(), index)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return list(self._names()) == other

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Any) -> list[Any]:  # type: ignore[override]
        return list(self._names()) + list(other)

    def __radd__(self, other: Any) -> list[Any]:
        return list(other) + list(self._names())

    def index(self, name: Any, *args: Any) -> int:
        return list.index(self._sync(), name, *args)

    def count(self, name: Any) -> int:
        return list.count(self._sync(), name)

    def copy(self) -> list[Any]:
        return list(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


# ---- nodes.common_ksampler -------------------------------------------------------------------------


def common_ksampler(
    services: Mapping[str, Any],
    model: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Any,
    negative: Any,
    latent: Mapping[str, Any],
    *,
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> tuple[dict[str, Any]]:
    """ComfyUI's nodes.common_ksampler: what KSampler / KSamplerAdvanced run, on the runtime's library,
    reporting steps as the running node's progress."""
    from engine.execution.context import SAMPLERS, running_context
    from engine.handles.sampling import ksample

    context = running_context()
    out = ksample(
        model,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        positive=positive,
        negative=negative,
        latent=latent,
        denoise=denoise,
        add_noise=not disable_noise,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
        report=context.progress if context is not None else None,
        library=services[SAMPLERS],
    )
    return (out,)


# ---- k-diffusion schedule helpers ComfyUI packs call ------------------------------------------------


def polyexponential_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Sigmas polynomial in log sigma: exp(ramp^rho · (log smax − log smin) + log smin), ramp 1 → 0."""
    import math

    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def vp_sigmas(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """The continuous VP schedule (Song et al. 2021): sigma(t) = sqrt(exp(beta_d t²/2 + beta_min t) − 1)."""
    t = torch.linspace(1, eps_s, n)
    sigmas = torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t))
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def laplace_sigmas(
    n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5
) -> torch.Tensor:
    """The Laplace schedule (Tiankai et al. 2024): log sigma = mu − beta·sign(½−x)·log(1 − 2|½−x|),
    clamped to [sigma_min, sigma_max] (no trailing zero, as ComfyUI returns it)."""
    x = torch.linspace(0, 1, n)
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)
