"""Model sampling nodes (ComfyUI's ModelSamplingDiscrete, ModelSamplingContinuousEDM,
ModelSamplingContinuousV): a clone of the MODEL sampled with another noise schedule or prediction kind.
The schedules and parameterisations are ComfyUI's (comfy/model_sampling.py), written anew here.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from engine import api

# ---- model sampling ----------------------------------------------------------------------------------

# The discrete schedule ComfyUI builds from an SD model config (SD1/SD2/SDXL declare no other).
_LINEAR_START, _LINEAR_END, _TIMESTEPS = 0.00085, 0.012, 1000
# alphas_cumprod of the last step after the zero-terminal-SNR rescale, ComfyUI's value for 0.
_ZSNR_LAST = 4.8973451890853435e-08


def discrete_alphas_cumprod(zsnr: bool) -> torch.Tensor:
    """The scaled-linear beta schedule's cumulative alphas, rescaled to zero terminal SNR when asked
    (Lin et al. 2024, Algorithm 1: sqrt(alpha_bar) shifted and scaled so the last is 0, the first kept)."""
    betas = torch.linspace(_LINEAR_START**0.5, _LINEAR_END**0.5, _TIMESTEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if zsnr:
        root = alphas_cumprod.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        alphas_cumprod = ((root - last) * first / (first - last)) ** 2
        alphas_cumprod[-1] = _ZSNR_LAST
    return alphas_cumprod


def _x0_denoised(self: Any, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return model_output


def _unscaled_input(self: Any, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x


# LCM-distilled models were trained on 50 of the 1000 timesteps: 19, 39, ..., 999.
_LCM_STEPS = 50
_LCM_SKIP = _TIMESTEPS // _LCM_STEPS


def _lcm_timestep(self: Any, sigma: torch.Tensor) -> torch.Tensor:
    """The nearest distilled timestep (in log sigma)."""
    sigma = torch.as_tensor(sigma)
    log_s = sigma.detach().to("cpu", torch.float64).clamp_min(1e-30).log().reshape(-1)
    index = (log_s[None, :] - self.log_sigmas[:, None]).abs().argmin(dim=0)
    t = index.to(torch.float64) * _LCM_SKIP + (_LCM_SKIP - 1)
    out_dtype = sigma.dtype if sigma.is_floating_point() else torch.float32
    return t.reshape(sigma.shape).to(sigma.device, out_dtype)


def _lcm_sigma(self: Any, timestep: torch.Tensor) -> torch.Tensor:
    timestep = torch.as_tensor(timestep)
    t = ((timestep.detach().to("cpu", torch.float64) - (_LCM_SKIP - 1)) / _LCM_SKIP).clamp(0, _LCM_STEPS - 1)
    lo, hi = t.floor().long(), t.ceil().long()
    w = t - lo.to(torch.float64)
    log_s = (1.0 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]
    out_dtype = timestep.dtype if timestep.is_floating_point() else torch.float32
    return log_s.exp().to(timestep.device, out_dtype)


def _lcm_percent_to_sigma(self: Any, percent: float) -> float:
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    return float(self.sigma(torch.tensor((1.0 - percent) * (_TIMESTEPS - 1))))


def _lcm_denoised(
    self: Any, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Luo et al. 2023 (LCM) boundary conditions: c_skip·x + c_out·x0_eps with sigma_data 0.5 and the
    timestep scaled by 10."""
    shape = sigma.shape[:1] + (1,) * (model_output.ndim - 1)
    t = self.timestep(sigma).reshape(shape).to(x.dtype) * 10.0
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(shape)
    x0 = x - model_output * s
    c_skip = 0.25 / (t * t + 0.25)
    c_out = t / (t * t + 0.25) ** 0.5
    return c_out * x0 + c_skip * x


_KIND_METHODS: dict[str, dict[str, Any]] = {
    "x0": {"calculate_denoised": _x0_denoised},
    "img_to_img": {"calculate_denoised": _x0_denoised, "calculate_input": _unscaled_input},
    "lcm": {
        "calculate_denoised": _lcm_denoised,
        "timestep": _lcm_timestep,
        "model_timestep": _lcm_timestep,
        "sigma": _lcm_sigma,
        "percent_to_sigma": _lcm_percent_to_sigma,
    },
}


def discrete_sampling(base: Any, sampling: str, zsnr: bool) -> Any:
    """A copy of the model's discrete sampling with ComfyUI's SD schedule (zero terminal SNR if zsnr, the
    50 distilled timesteps for lcm) and the prediction kind `sampling`."""
    if not hasattr(base, "log_sigmas"):
        raise ValueError("ModelSamplingDiscrete needs a model with a discrete noise schedule (SD1/SD2/SDXL)")
    ms = copy.copy(base)
    alphas_cumprod = discrete_alphas_cumprod(zsnr)
    sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
    ms.alphas_cumprod = alphas_cumprod
    ms.num_timesteps = _TIMESTEPS
    if sampling == "lcm":
        sigmas = sigmas[_LCM_SKIP - 1 :: _LCM_SKIP]
        ms.num_timesteps = _LCM_STEPS
    ms.sigmas = sigmas.float()
    ms.log_sigmas = sigmas.log()
    ms.prediction = "v" if sampling == "v_prediction" else "eps"
    # The schedule class under any kind an earlier ModelSamplingDiscrete put on it.
    cls: Any = type(base)
    while "_node_kind" in cls.__dict__:
        cls = cls.__bases__[0]
    methods = _KIND_METHODS.get(sampling)
    if methods is not None:
        name = {"x0": "X0", "img_to_img": "ImgToImg", "lcm": "LCM"}[sampling]
        cls = type(cls)(f"ModelSampling{name}", (cls,), {**methods, "_node_kind": sampling})
    ms.__class__ = cls
    return ms


@api.node(
    "ModelSamplingDiscrete",
    category="advanced/model",
    display_name="ModelSamplingDiscrete",
    inputs=[
        api.Input("model", api.MODEL),
        api.Combo("sampling", ["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
        api.Boolean("zsnr", False),
    ],
    outputs=[api.MODEL],
)
def model_sampling_discrete(model: Any, sampling: str, zsnr: bool):
    """The model sampled as an eps / v / x0 / image-to-image predictor on the SD schedule or as an
    LCM-distilled one, optionally with zero terminal SNR."""
    m = model.clone()
    m.model_sampling = discrete_sampling(model.model_sampling, sampling, zsnr)
    # A pack's model_sampling object patch on the input would otherwise still be what it reads.
    getattr(m, "object_patches", {}).pop("model_sampling", None)
    return (m,)


# ---- continuous schedules ------------------------------------------------------------------------------


def _schedule_base(model_sampling: Any) -> Any:
    """The engine's ModelSampling class (prediction parameterisation, noise scaling) under a MODEL's
    sampling, which a continuous schedule extends."""
    return next(c for c in type(model_sampling).__mro__ if c.__name__ == "ModelSampling")


def _continuous_class(base: Any, time: str) -> Any:
    """A schedule of 1000 log-spaced sigmas with timestep 0.25·ln(sigma) (EDM, Karras et al. 2022) or
    2/pi·atan(sigma) (the continuous-v models), and an `edm` prediction kind besides eps / v."""

    def __init__(self: Any, kind: str, sigma_min: float, sigma_max: float, sigma_data: float) -> None:
        base.__init__(self, "eps" if kind == "eps" else "v")
        self.kind = kind
        self.sigma_data = sigma_data
        sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.sigmas = sigmas
        self.log_sigmas = sigmas.log()

    def timestep(self: Any, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        return 0.25 * sigma.log() if time == "edm" else sigma.atan() / math.pi * 2

    def sigma(self: Any, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        return (timestep / 0.25).exp() if time == "edm" else (timestep * math.pi / 2).tan()

    def percent_to_sigma(self: Any, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        low = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - low) * (1.0 - percent) + low)

    def calculate_denoised(self: Any, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor):
        if self.kind != "edm":
            return base.calculate_denoised(self, sigma, model_output, x)
        # EDM's F-parameterisation: c_skip·x + c_out·F with c_out = +sigma·sigma_data/sqrt(sigma² + sigma_data²).
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
        sd2 = self.sigma_data**2
        return x * sd2 / (s * s + sd2) + model_output * s * self.sigma_data / (s * s + sd2) ** 0.5

    methods = {"__init__": __init__, "timestep": timestep, "model_timestep": timestep, "sigma": sigma}
    methods |= {"percent_to_sigma": percent_to_sigma, "calculate_denoised": calculate_denoised}
    name = "ModelSamplingContinuousEDM" if time == "edm" else "ModelSamplingContinuousV"
    return type(base)(name, (base,), methods)


def continuous_sampling(model: Any, time: str, sampling: str, sigma_min: float, sigma_max: float) -> Any:
    if sampling not in ("eps", "v_prediction", "edm"):
        raise ValueError(
            f"model sampling {sampling!r} is not supported by diffgraph (its latent format or schedule is not "
            "implemented); use eps, v_prediction or edm"
        )
    sigma_data = 0.5 if sampling == "edm" else 1.0
    kind = {"v_prediction": "v"}.get(sampling, sampling)
    cls = _continuous_class(_schedule_base(model.model_sampling), time)
    m = model.clone()
    m.model_sampling = cls(kind, sigma_min, sigma_max, sigma_data)
    getattr(m, "object_patches", {}).pop("model_sampling", None)
    return m


def _continuous_inputs(choices: list[str], sigma_max: float, sigma_min: float) -> list[api.Input]:
    return [
        api.Input("model", api.MODEL),
        api.Combo("sampling", choices),
        api.Float("sigma_max", sigma_max, min=0.0, max=1000.0, step=0.001, round=False),
        api.Float("sigma_min", sigma_min, min=0.0, max=1000.0, step=0.001, round=False),
    ]


@api.node(
    "ModelSamplingContinuousEDM",
    category="advanced/model",
    display_name="ModelSamplingContinuousEDM",
    inputs=_continuous_inputs(
        ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"], 120.0, 0.002
    ),
    outputs=[api.MODEL],
)
def model_sampling_continuous_edm(model: Any, sampling: str, sigma_max: float, sigma_min: float):
    """Continuous EDM noise levels (CosXL: v_prediction; EDM-trained SDXL: edm). edm_playground_v2.5 and
    cosmos_rflow are refused: diffgraph lacks their latent format / schedule."""
    return (continuous_sampling(model, "edm", sampling, sigma_min, sigma_max),)


@api.node(
    "ModelSamplingContinuousV",
    category="advanced/model",
    display_name="ModelSamplingContinuousV",
    inputs=_continuous_inputs(["v_prediction"], 500.0, 0.03),
    outputs=[api.MODEL],
)
def model_sampling_continuous_v(model: Any, sampling: str, sigma_max: float, sigma_min: float):
    """Continuous v-prediction noise levels with timestep 2/pi·atan(sigma)."""
    return (continuous_sampling(model, "v", sampling, sigma_min, sigma_max),)


NODES = [model_sampling_discrete, model_sampling_continuous_edm, model_sampling_continuous_v]
