"""The custom-sampling family (ComfyUI's comfy_extras/nodes_custom_sampler names): samplers, schedulers
(SIGMAS), noise sources (NOISE) and guiders (GUIDER) wired into SamplerCustom / SamplerCustomAdvanced."""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import sampling as hs

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
        api.Int("steps", 20, min=1, max=10000),
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
        api.Int("steps", 20, min=1, max=10000),
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
        api.Int("steps", 20, min=1, max=10000),
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
        api.Int("steps", 1, min=1, max=10),
        api.Float("denoise", 1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[api.SIGMAS],
)
def sd_turbo_scheduler(model: Any, steps: int, denoise: float):
    return (hs.sd_turbo_sigmas(model, steps, denoise),)


@api.node(
    "SplitSigmas",
    category=CATEGORY + "/sigmas",
    inputs=[api.Input("sigmas", api.SIGMAS), api.Int("step", 0, min=0, max=10000)],
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
        api.Combo("style", ["regular", "nested"], default="regular"),
    ],
    outputs=[api.GUIDER],
)
def dual_cfg_guider(
    model: Any, cond1: Any, cond2: Any, negative: Any, cfg_conds: float, cfg_cond2_negative: float, style: str
):
    conds = {"cond1": cond1, "cond2": cond2, "negative": negative}
    return (hs.Guider(model, "dual", conds, cfg=cfg_conds, cfg2=cfg_cond2_negative, style=style),)


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
]
