"""The custom-sampling family (ComfyUI's comfy_extras/nodes_custom_sampler names): samplers, schedulers
(SIGMAS), noise sources (NOISE) and guiders (GUIDER) wired into SamplerCustom / SamplerCustomAdvanced."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from engine import api
from engine.api import sampling as hs

from ._image_ops import common_upscale
from .sampling import sampler_input, scheduler_input, seed_input

CATEGORY = "sampling/custom_sampling"


@api.node(
    "SamplerCustom",
    category=CATEGORY,
    inputs=[
        api.Input("model", api.MODEL),
        api.Boolean("add_noise", True),
        seed_input("noise_seed", tooltip=None),
        api.Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("sampler", api.SAMPLER),
        api.Input("sigmas", api.SIGMAS),
        api.Input("latent_image", api.LATENT),
    ],
    outputs=[api.Output(api.LATENT, "output"), api.Output(api.LATENT, "denoised_output")],
)
def sampler_custom(
    model: Any,
    add_noise: bool,
    noise_seed: int,
    cfg: float,
    positive: Any,
    negative: Any,
    sampler: Any,
    sigmas: Any,
    latent_image: Any,
    context: api.ExecutionContext,
):
    noise = hs.RandomNoise(noise_seed) if add_noise else hs.DisabledNoise(noise_seed)
    guider = hs.Guider(model, "cfg", {"positive": positive, "negative": negative}, cfg=cfg)
    return hs.custom_sample(noise, guider, sampler, sigmas, latent_image, report=context.progress)


@api.node(
    "SamplerCustomAdvanced",
    category=CATEGORY,
    inputs=[
        api.Input("noise", api.NOISE),
        api.Input("guider", api.GUIDER),
        api.Input("sampler", api.SAMPLER),
        api.Input("sigmas", api.SIGMAS),
        api.Input("latent_image", api.LATENT),
    ],
    outputs=[api.Output(api.LATENT, "output"), api.Output(api.LATENT, "denoised_output")],
)
def sampler_custom_advanced(
    noise: Any, guider: Any, sampler: Any, sigmas: Any, latent_image: Any, context: api.ExecutionContext
):
    return hs.custom_sample(noise, guider, sampler, sigmas, latent_image, report=context.progress)


@api.node(
    "KSamplerSelect",
    category=CATEGORY + "/samplers",
    inputs=[sampler_input()],
    outputs=[api.SAMPLER],
)
def ksampler_select(sampler_name: str, context: api.ExecutionContext):
    return (context.samplers.sampler(sampler_name),)


@api.node(
    "BasicScheduler",
    category=CATEGORY + "/schedulers",
    inputs=[
        api.Input("model", api.MODEL),
        scheduler_input(),
        api.Int("steps", 20, min=1, max=10000, step=None),
        api.Float("denoise", 1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[api.SIGMAS],
)
def basic_scheduler(model: Any, scheduler: str, steps: int, denoise: float, context: api.ExecutionContext):
    return (hs.scheduler_sigmas(model, scheduler, steps, denoise, library=context.samplers),)


@api.node(
    "KarrasScheduler",
    category=CATEGORY + "/schedulers",
    inputs=[
        api.Int("steps", 20, min=1, max=10000, step=None),
        api.Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False),
        api.Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False),
        api.Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False),
    ],
    outputs=[api.SIGMAS],
)
def karras_scheduler(steps: int, sigma_max: float, sigma_min: float, rho: float):
    return (hs.karras_sigmas(steps, sigma_max, sigma_min, rho),)


@api.node(
    "ExponentialScheduler",
    category=CATEGORY + "/schedulers",
    inputs=[
        api.Int("steps", 20, min=1, max=10000, step=None),
        api.Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False),
        api.Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False),
    ],
    outputs=[api.SIGMAS],
)
def exponential_scheduler(steps: int, sigma_max: float, sigma_min: float):
    return (hs.exponential_sigmas(steps, sigma_max, sigma_min),)


@api.node(
    "SDTurboScheduler",
    category=CATEGORY + "/schedulers",
    inputs=[
        api.Input("model", api.MODEL),
        api.Int("steps", 1, min=1, max=10, step=None),
        api.Float("denoise", 1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[api.SIGMAS],
)
def sd_turbo_scheduler(model: Any, steps: int, denoise: float):
    return (hs.sd_turbo_sigmas(model, steps, denoise),)


@api.node(
    "SplitSigmas",
    category=CATEGORY + "/sigmas",
    inputs=[api.Input("sigmas", api.SIGMAS), api.Int("step", 0, min=0, max=10000, step=None)],
    outputs=[api.Output(api.SIGMAS, "high_sigmas"), api.Output(api.SIGMAS, "low_sigmas")],
)
def split_sigmas(sigmas: Any, step: int):
    return hs.split_sigmas(sigmas, step)


@api.node(
    "FlipSigmas",
    category=CATEGORY + "/sigmas",
    inputs=[api.Input("sigmas", api.SIGMAS)],
    outputs=[api.SIGMAS],
)
def flip_sigmas(sigmas: Any):
    return (hs.flip_sigmas(sigmas),)


@api.node(
    "RandomNoise",
    category=CATEGORY + "/noise",
    inputs=[seed_input("noise_seed", tooltip=None)],
    outputs=[api.NOISE],
)
def random_noise(noise_seed: int):
    return (hs.RandomNoise(noise_seed),)


@api.node("DisableNoise", category=CATEGORY + "/noise", outputs=[api.NOISE])
def disable_noise():
    return (hs.DisabledNoise(),)


@api.node(
    "BasicGuider",
    category=CATEGORY + "/guiders",
    inputs=[api.Input("model", api.MODEL), api.Input("conditioning", api.CONDITIONING)],
    outputs=[api.GUIDER],
)
def basic_guider(model: Any, conditioning: Any):
    return (hs.Guider(model, "basic", {"positive": conditioning}),)


@api.node(
    "CFGGuider",
    category=CATEGORY + "/guiders",
    inputs=[
        api.Input("model", api.MODEL),
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
    ],
    outputs=[api.GUIDER],
)
def cfg_guider(model: Any, positive: Any, negative: Any, cfg: float):
    return (hs.Guider(model, "cfg", {"positive": positive, "negative": negative}, cfg=cfg),)


@api.node(
    "DualCFGGuider",
    category=CATEGORY + "/guiders",
    inputs=[
        api.Input("model", api.MODEL),
        api.Input("cond1", api.CONDITIONING),
        api.Input("cond2", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Float("cfg_conds", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        api.Float("cfg_cond2_negative", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        api.Combo("style", ["regular", "nested"]),
    ],
    outputs=[api.GUIDER],
)
def dual_cfg_guider(
    model: Any, cond1: Any, cond2: Any, negative: Any, cfg_conds: float, cfg_cond2_negative: float, style: str
):
    conds = {"cond1": cond1, "cond2": cond2, "negative": negative}
    return (hs.Guider(model, "dual", conds, cfg=cfg_conds, cfg2=cfg_cond2_negative, style=style),)


# -- samplers with their options (ComfyUI's Sampler* nodes) ------------------------------------------

SAMPLERS = CATEGORY + "/samplers"


def _unrounded(name: str, default: float, maximum: float = 100.0) -> api.Input:
    """A sampler option widget as ComfyUI declares them: 0 .. maximum, step 0.01, no rounding."""
    return api.Float(name, default, min=0.0, max=maximum, step=0.01, round=False)


def configured(context: api.ExecutionContext, name: str, **options: Any) -> Any:
    """The runtime's sampler `name` with `options` bound (they override the entry's own defaults)."""
    spec = context.samplers.sampler(name)
    return dataclasses.replace(spec, options=tuple({**dict(spec.options), **options}.items()))


def _device_variant(name: str, noise_device: str) -> str:
    """The *_gpu sampler (Brownian tree on the latent's device) for noise_device "gpu"."""
    return f"{name}_gpu" if noise_device == "gpu" else name


@api.node(
    "SamplerEulerAncestral",
    category=SAMPLERS,
    inputs=[_unrounded("eta", 1.0), _unrounded("s_noise", 1.0)],
    outputs=[api.SAMPLER],
)
def sampler_euler_ancestral(eta: float, s_noise: float, context: api.ExecutionContext):
    return (configured(context, "euler_ancestral", eta=eta, s_noise=s_noise),)


@api.node(
    "SamplerEulerAncestralCFGPP",
    category=SAMPLERS,
    display_name="SamplerEulerAncestralCFG++",
    inputs=[_unrounded("eta", 1.0, maximum=1.0), _unrounded("s_noise", 1.0, maximum=10.0)],
    outputs=[api.SAMPLER],
)
def sampler_euler_ancestral_cfgpp(eta: float, s_noise: float, context: api.ExecutionContext):
    return (configured(context, "euler_ancestral_cfg_pp", eta=eta, s_noise=s_noise),)


@api.node(
    "SamplerLMS",
    category=SAMPLERS,
    inputs=[api.Int("order", 4, min=1, max=100, step=None)],
    outputs=[api.SAMPLER],
)
def sampler_lms(order: int, context: api.ExecutionContext):
    return (configured(context, "lms", order=order),)


NOISE_DEVICES = ["gpu", "cpu"]


@api.node(
    "SamplerDPMPP_2M_SDE",
    category=SAMPLERS,
    inputs=[
        api.Combo("solver_type", ["midpoint", "heun"]),
        _unrounded("eta", 1.0),
        _unrounded("s_noise", 1.0),
        api.Combo("noise_device", NOISE_DEVICES),
    ],
    outputs=[api.SAMPLER],
)
def sampler_dpmpp_2m_sde(
    solver_type: str, eta: float, s_noise: float, noise_device: str, context: api.ExecutionContext
):
    name = _device_variant("dpmpp_2m_sde", noise_device)
    return (configured(context, name, eta=eta, s_noise=s_noise, solver_type=solver_type),)


@api.node(
    "SamplerDPMPP_3M_SDE",
    category=SAMPLERS,
    inputs=[_unrounded("eta", 1.0), _unrounded("s_noise", 1.0), api.Combo("noise_device", NOISE_DEVICES)],
    outputs=[api.SAMPLER],
)
def sampler_dpmpp_3m_sde(eta: float, s_noise: float, noise_device: str, context: api.ExecutionContext):
    name = _device_variant("dpmpp_3m_sde", noise_device)
    return (configured(context, name, eta=eta, s_noise=s_noise),)


@api.node(
    "SamplerDPMPP_SDE",
    category=SAMPLERS,
    inputs=[
        _unrounded("eta", 1.0),
        _unrounded("s_noise", 1.0),
        _unrounded("r", 0.5),
        api.Combo("noise_device", NOISE_DEVICES),
    ],
    outputs=[api.SAMPLER],
)
def sampler_dpmpp_sde(eta: float, s_noise: float, r: float, noise_device: str, context: api.ExecutionContext):
    name = _device_variant("dpmpp_sde", noise_device)
    return (configured(context, name, eta=eta, s_noise=s_noise, r=r),)


@api.node(
    "SamplerDPMPP_2S_Ancestral",
    category=SAMPLERS,
    inputs=[_unrounded("eta", 1.0), _unrounded("s_noise", 1.0)],
    outputs=[api.SAMPLER],
)
def sampler_dpmpp_2s_ancestral(eta: float, s_noise: float, context: api.ExecutionContext):
    return (configured(context, "dpmpp_2s_ancestral", eta=eta, s_noise=s_noise),)


ADAPTIVE_OPTIONS = (
    ("rtol", 0.05),
    ("atol", 0.0078),
    ("h_init", 0.05),
    ("pcoeff", 0.0),
    ("icoeff", 1.0),
    ("dcoeff", 0.0),
    ("accept_safety", 0.81),
    ("eta", 0.0),
    ("s_noise", 1.0),
)


@api.node(
    "SamplerDPMAdaptative",
    category=SAMPLERS,
    inputs=[
        api.Int("order", 3, min=2, max=3, step=None),
        *(_unrounded(name, default) for name, default in ADAPTIVE_OPTIONS),
    ],
    outputs=[api.SAMPLER],
)
def sampler_dpm_adaptative(order: int, context: api.ExecutionContext, **options: float):
    """dpm_adaptive with its error control (tolerances, PID coefficients, step acceptance) exposed."""
    return (configured(context, "dpm_adaptive", order=order, **options),)


ER_SDE_TYPES = ["ER-SDE", "Reverse-time SDE", "ODE"]


@api.node(
    "SamplerER_SDE",
    category=SAMPLERS,
    inputs=[
        api.Combo("solver_type", ER_SDE_TYPES),
        api.Int("max_stage", 3, min=1, max=3, step=None),
        _unrounded("eta", 1.0),
        _unrounded("s_noise", 1.0),
    ],
    outputs=[api.SAMPLER],
)
def sampler_er_sde(
    solver_type: str, max_stage: int, eta: float, s_noise: float, context: api.ExecutionContext
):
    """ER-SDE with its own noise scale function, or the reverse-time SDE with f(l) = l^(eta + 1) (eta 0,
    or "ODE": no noise, the probability-flow ODE)."""
    if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
        eta, s_noise = 0.0, 0.0
    power = eta + 1.0

    def reverse_time_scaler(value: Any) -> Any:
        return value**power

    scaler = None if solver_type == "ER-SDE" else reverse_time_scaler
    return (configured(context, "er_sde", s_noise=s_noise, noise_scaler=scaler, max_stage=max_stage),)


@api.node(
    "SamplerSASolver",
    category=SAMPLERS,
    inputs=[
        api.Input("model", api.MODEL),
        _unrounded("eta", 1.0, maximum=10.0),
        api.Float("sde_start_percent", 0.2, min=0.0, max=1.0, step=0.001),
        api.Float("sde_end_percent", 0.8, min=0.0, max=1.0, step=0.001),
        _unrounded("s_noise", 1.0),
        api.Int("predictor_order", 3, min=1, max=6, step=None),
        api.Int("corrector_order", 4, min=0, max=6, step=None),
        api.Boolean("use_pece", None),
        api.Boolean("simple_order_2", None),
    ],
    outputs=[api.SAMPLER],
)
def sampler_sa_solver(
    model: Any,
    eta: float,
    sde_start_percent: float,
    sde_end_percent: float,
    s_noise: float,
    predictor_order: int,
    corrector_order: int,
    use_pece: bool,
    simple_order_2: bool,
    context: api.ExecutionContext,
):
    """SA-Solver whose stochasticity tau is eta between the model's sigmas at sde_start_percent and
    sde_end_percent of the schedule, 0 (deterministic) outside."""
    ms = model.model_sampling
    start, end = float(ms.percent_to_sigma(sde_start_percent)), float(ms.percent_to_sigma(sde_end_percent))

    def tau(sigma: float) -> float:
        return eta if eta > 0 and end <= sigma <= start else 0.0

    options = {"predictor_order": predictor_order, "corrector_order": corrector_order}
    options |= {"use_pece": bool(use_pece), "simple_order_2": bool(simple_order_2)}
    return (configured(context, "sa_solver", tau_func=tau, s_noise=s_noise, **options),)


@api.node(
    "SamplerEulerCFGpp",
    category="_for_testing",
    display_name="SamplerEulerCFG++",
    inputs=[api.Combo("version", ["regular", "alternative"])],
    outputs=[api.SAMPLER],
    experimental=True,
)
def sampler_euler_cfgpp(version: str, context: api.ExecutionContext):
    if version == "alternative":
        return (hs.euler_cfg_pp_alternative_sampler(),)
    return (context.samplers.sampler("euler_cfg_pp"),)


LCM_UPSCALE_METHODS = ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]


@api.node(
    "SamplerLCMUpscale",
    category=SAMPLERS,
    inputs=[
        api.Float("scale_ratio", 1.0, min=0.1, max=20.0, step=0.01),
        api.Int("scale_steps", -1, min=-1, max=1000, step=1),
        api.Combo("upscale_method", LCM_UPSCALE_METHODS),
    ],
    outputs=[api.SAMPLER],
)
def sampler_lcm_upscale(scale_ratio: float, scale_steps: int, upscale_method: str):
    """LCM that grows the latent to scale_ratio × its size over the first scale_steps steps (-1: half of
    them). Its re-noising draws come from the noise seed (ComfyUI draws them unseeded)."""

    def resize(latent: Any, width: int, height: int) -> Any:
        return common_upscale(latent, width, height, upscale_method, "disabled")

    return (hs.lcm_upscale_sampler(resize, scale_ratio, None if scale_steps < 0 else scale_steps),)


class _ProjectedGuidance:
    """The pre-CFG hook of APG (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High
    Guidance Scales in Diffusion Models"): the guidance g = cond − uncond, optionally a running average
    (momentum, reset when sigma rises: a new sampling run), clipped to an L2 norm per item, split into its
    parts parallel and orthogonal to cond, the parallel part scaled by eta. The conditional prediction is
    rewritten so that CFG with scale w yields cond + w·g' (ComfyUI's formulation)."""

    def __init__(self, eta: float, norm_threshold: float, momentum: float) -> None:
        self.eta, self.norm_threshold, self.momentum = eta, norm_threshold, momentum
        self.running: Any = None
        self.previous_sigma: float | None = None

    def __call__(self, args: dict[str, Any]) -> list[Any]:
        outputs = list(args["conds_out"])
        if len(outputs) == 1:
            return outputs
        cond, uncond = outputs[0], outputs[1]
        sigma = float(args["sigma"][0])
        if self.previous_sigma is not None and sigma > self.previous_sigma:
            self.running = None
        self.previous_sigma = sigma
        guidance = cond - uncond
        if self.momentum != 0:
            self.running = guidance if self.running is None else self.momentum * self.running + guidance
            guidance = self.running
        dims = [-1, -2, -3]
        if self.norm_threshold > 0:
            norm = guidance.norm(p=2, dim=dims, keepdim=True)
            guidance = guidance * torch.clamp(self.norm_threshold / norm, max=1.0)
        unit = torch.nn.functional.normalize(cond, dim=dims)
        parallel = (guidance * unit).sum(dim=dims, keepdim=True) * unit
        modified = guidance - parallel + self.eta * parallel
        outputs[0] = uncond + modified + (cond - uncond) / args["cond_scale"]
        return outputs


@api.node(
    "APG",
    category=CATEGORY,
    display_name="Adaptive Projected Guidance",
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("eta", 1.0, min=-10.0, max=10.0, step=0.01),
        api.Float("norm_threshold", 5.0, min=0.0, max=50.0, step=0.1),
        api.Float("momentum", 0.0, min=-5.0, max=1.0, step=0.01),
    ],
    outputs=[api.MODEL],
)
def apg(model: Any, eta: float, norm_threshold: float, momentum: float):
    """A MODEL whose CFG uses adaptive projected guidance: each step's result is cond + w·g' (w the CFG
    scale, g' the projected guidance; with eta 1 and neither threshold nor momentum, g' = cond − uncond)."""
    patched = model.clone()
    patched.set_model_sampler_pre_cfg_function(_ProjectedGuidance(eta, norm_threshold, momentum))
    return (patched,)


NODES = [
    sampler_custom,
    sampler_custom_advanced,
    ksampler_select,
    basic_scheduler,
    karras_scheduler,
    exponential_scheduler,
    sd_turbo_scheduler,
    split_sigmas,
    flip_sigmas,
    random_noise,
    disable_noise,
    basic_guider,
    cfg_guider,
    dual_cfg_guider,
    sampler_euler_ancestral,
    sampler_euler_ancestral_cfgpp,
    sampler_lms,
    sampler_dpmpp_2m_sde,
    sampler_dpmpp_3m_sde,
    sampler_dpmpp_sde,
    sampler_dpmpp_2s_ancestral,
    sampler_dpm_adaptative,
    sampler_er_sde,
    sampler_sa_solver,
    sampler_euler_cfgpp,
    sampler_lcm_upscale,
    apg,
]
