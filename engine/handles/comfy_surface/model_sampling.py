"""ComfyUI's model-sampling classes (comfy.model_sampling) over diffgraph's ModelSampling.

Packs build model samplings the ComfyUI way - a schedule class and a prediction mixin combined,
``class Sampling(ModelSamplingDiscrete, EPS)``, constructed from a model config, tuned with
``set_parameters`` / ``_register_schedule`` / ``set_sigmas`` - and install them with
``model.add_object_patch("model_sampling", obj)``. Here the schedule classes are diffgraph's own
schedules (engine.diffusion.sampling.model_sampling) under ComfyUI's constructors, and the mixins set the
prediction kind, so such an object samples in diffgraph as it is. ``isinstance(x, EPS)`` (and the other
ComfyUI names) also holds for diffgraph's own objects of that kind, as packs test model kinds that way.
Schedules diffgraph does not run (EDM, Stable Cascade, Cosmos) exist by name and refuse construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from engine.diffusion.sampling import model_sampling as ms

# alphas_cumprod of the last step after the zero-terminal-SNR rescale: ComfyUI's value for "0", which
# keeps sigma finite (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
_ZSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08


class _KindMeta(type):
    """isinstance also accepts diffgraph's own objects of the kind a ComfyUI base class names."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        accepts: Callable[[Any], bool] | None = cls.__dict__.get("_accepts")
        return accepts is not None and accepts(obj)


def _prediction_in(*kinds: str) -> Callable[[Any], bool]:
    return staticmethod(lambda obj: isinstance(obj, ms.ModelSampling) and obj.prediction in kinds)  # type: ignore[return-value]


def _engine_type(kind: type, exclude: type | None = None) -> Callable[[Any], bool]:
    def accepts(obj: Any) -> bool:
        return isinstance(obj, kind) and not (exclude is not None and isinstance(obj, exclude))

    return staticmethod(accepts)  # type: ignore[return-value]


# ---- prediction kinds (mixins) ------------------------------------------------------------------
class EPS(ms.ModelSampling, metaclass=_KindMeta):
    prediction = "eps"
    _accepts = _prediction_in("eps", "v")


class V_PREDICTION(EPS):  # noqa: N801 - ComfyUI's name
    prediction = "v"
    _accepts = _prediction_in("v")


class CONST(ms.ModelSampling, metaclass=_KindMeta):
    prediction = "flow"
    _accepts = _prediction_in("flow")


class EDM(V_PREDICTION):
    pass


class X0(EPS):
    pass


class IMG_TO_IMG(X0):  # noqa: N801 - ComfyUI's name
    pass


class COSMOS_RFLOW(ms.ModelSampling, metaclass=_KindMeta):  # noqa: N801 - ComfyUI's name
    prediction = "flow"


def _settings(model_config: Any) -> dict[str, Any]:
    return dict(getattr(model_config, "sampling_settings", None) or {})


def _kind(obj: Any, default: str) -> str:
    return getattr(type(obj), "prediction", default)


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alphas_cumprod) so the last step has zero SNR, the first unchanged."""
    alphas_cumprod = 1.0 / (sigmas.double() ** 2 + 1.0)
    a = alphas_cumprod.sqrt()
    a_first, a_last = a[0].clone(), a[-1].clone()
    a = (a - a_last) * a_first / (a_first - a_last)
    alphas_cumprod = a**2
    alphas_cumprod[-1] = _ZSNR_LAST_ALPHA_CUMPROD
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt().to(sigmas.dtype)


# ---- schedules ------------------------------------------------------------------------------------
class ModelSamplingDiscrete(ms.ModelSamplingDiscrete, metaclass=_KindMeta):
    """The discrete DDPM schedule, built from a model config's ``sampling_settings``."""

    _accepts = _engine_type(ms.ModelSamplingDiscrete)

    def __init__(self, model_config: Any = None, zsnr: bool | None = None) -> None:
        settings = _settings(model_config)
        self._register_schedule(
            beta_schedule=settings.get("beta_schedule", "linear"),
            timesteps=settings.get("timesteps", 1000),
            linear_start=settings.get("linear_start", 0.00085),
            linear_end=settings.get("linear_end", 0.012),
            zsnr=settings.get("zsnr", False) if zsnr is None else zsnr,
        )

    def _register_schedule(
        self,
        given_betas: Any = None,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
        zsnr: bool = False,
    ) -> None:
        if given_betas is None and beta_schedule != "linear":
            raise ValueError(
                f"beta schedule {beta_schedule!r} is not supported (diffgraph runs the 'linear' one of Stable "
                "Diffusion); pass given_betas"
            )
        ms.ModelSamplingDiscrete.__init__(
            self,
            _kind(self, "eps"),
            linear_start=linear_start,
            linear_end=linear_end,
            num_timesteps=timesteps,
        )
        self.linear_start, self.linear_end, self.zsnr = linear_start, linear_end, zsnr
        if given_betas is not None:
            betas = torch.as_tensor(given_betas, dtype=torch.float64)
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
            self.set_sigmas(((1.0 - alphas_cumprod) / alphas_cumprod).sqrt())
        if zsnr:
            self.set_sigmas(rescale_zero_terminal_snr_sigmas(self.sigmas))

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        sigmas = torch.as_tensor(sigmas)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.double().log()
        self.num_timesteps = int(sigmas.shape[0])


class ModelSamplingDiscreteFlow(ms.ModelSamplingFlow, metaclass=_KindMeta):
    """Rectified flow with a shift (SD3), from ``sampling_settings`` "shift" / "multiplier"."""

    _accepts = _engine_type(ms.ModelSamplingFlow, exclude=ms.ModelSamplingFlux)

    def __init__(self, model_config: Any = None) -> None:
        settings = _settings(model_config)
        self.set_parameters(shift=settings.get("shift", 1.0), multiplier=settings.get("multiplier", 1000))

    def set_parameters(self, shift: float = 1.0, timesteps: int = 1000, multiplier: float = 1000) -> None:
        ms.ModelSamplingFlow.__init__(self, shift, multiplier=multiplier, num_timesteps=timesteps)


class ModelSamplingFlux(ms.ModelSamplingFlux, metaclass=_KindMeta):
    """FLUX.1's resolution-shifted flow schedule, from ``sampling_settings`` "shift"."""

    _accepts = _engine_type(ms.ModelSamplingFlux)

    def __init__(self, model_config: Any = None) -> None:
        self.set_parameters(shift=_settings(model_config).get("shift", 1.15))

    def set_parameters(self, shift: float = 1.15, timesteps: int = 10000) -> None:
        ms.ModelSamplingFlux.__init__(self, shift, num_timesteps=timesteps)


class _Unsupported(ms.ModelSampling, metaclass=_KindMeta):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__}: diffgraph does not run models with this noise schedule "
            "(it runs the discrete SD schedule and rectified flow)"
        )


class ModelSamplingContinuousEDM(_Unsupported):
    pass


class ModelSamplingContinuousV(ModelSamplingContinuousEDM):
    pass


class ModelSamplingDiscreteEDM(_Unsupported):
    pass


class StableCascadeSampling(_Unsupported):
    pass


class ModelSamplingCosmosRFlow(ModelSamplingContinuousEDM):
    pass


def time_snr_shift(alpha: float, t: Any) -> Any:
    return ms.time_snr_shift(alpha, t) if isinstance(t, torch.Tensor) else alpha * t / (1 + (alpha - 1) * t)


def flux_time_shift(mu: float, sigma: float, t: Any) -> Any:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


# ---- foreign objects -------------------------------------------------------------------------------
class _ForeignModelSampling(ms.ModelSampling):
    """A pack's own model-sampling object (not built on these classes) behind diffgraph's interface."""

    def __init__(self, obj: Any) -> None:
        super().__init__("flow" if isinstance(obj, CONST) else "eps")
        self.obj = obj
        self.sigmas = torch.as_tensor(obj.sigmas).float()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.obj.timestep(torch.as_tensor(sigma))

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.obj.sigma(torch.as_tensor(timestep))

    def percent_to_sigma(self, percent: float) -> float:
        return float(self.obj.percent_to_sigma(percent))

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.obj.calculate_input(sigma, x)

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        return self.obj.calculate_denoised(sigma, model_output, x)

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        return self.obj.noise_scaling(sigma, noise, latent, max_denoise)

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.obj.inverse_noise_scaling(sigma, latent)


def as_engine_model_sampling(obj: Any) -> ms.ModelSampling:
    """``obj`` as the ModelSampling diffgraph's samplers use (itself when it already is one)."""
    if type.__instancecheck__(ms.ModelSampling, obj):
        return obj  # type: ignore[no-any-return]
    return _ForeignModelSampling(obj)


def model_sampling_for_type(model_config: Any, model_type: Any) -> ms.ModelSampling:
    """ComfyUI's ``model_base.model_sampling(model_config, model_type)``: the schedule and prediction kind
    of a ``ModelType``, combined into one class and built from ``model_config``."""
    from engine.handles.comfy_surface.base_model import ModelType

    schedule: type = ModelSamplingDiscrete
    kind: type = {
        ModelType.EPS: EPS,
        ModelType.V_PREDICTION: V_PREDICTION,
        ModelType.FLOW: CONST,
        ModelType.FLUX: CONST,
        ModelType.IMG_TO_IMG: IMG_TO_IMG,
    }.get(model_type, EDM)
    if model_type == ModelType.FLOW:
        schedule = ModelSamplingDiscreteFlow
    elif model_type == ModelType.FLUX:
        schedule = ModelSamplingFlux
    elif kind is EDM:
        schedule = ModelSamplingContinuousEDM
    combined = type("ModelSampling", (schedule, kind), {})
    return combined(model_config)  # type: ignore[no-any-return]
