"""The custom-sampling family (ComfyUI's comfy_extras/nodes_custom_sampler names): samplers, schedulers
(SIGMAS), noise sources (NOISE) and guiders (GUIDER) wired into SamplerCustom / SamplerCustomAdvanced."""

from __future__ import annotations

from typing import Any

from engine import api
from engine.handles import sampling as hs
from nodes.sampling import SEED_MAX, sampler_input, scheduler_input

CATEGORY = "sampling/custom_sampling"


def _report(context: Any) -> Any:
    return context.progress if context is not None else None


@api.node(
    "SamplerCustom",
    category=CATEGORY,
    inputs=[
        api.Input("model", "MODEL"),
        api.Boolean("add_noise", True),
        api.Int("noise_seed", 0, min=0, max=SEED_MAX, control_after_generate=True),
        api.Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        api.Input("positive", "CONDITIONING"),
        api.Input("negative", "CONDITIONING"),
        api.Input("sampler", "SAMPLER"),
        api.Input("sigmas", "SIGMAS"),
        api.Input("latent_image", "LATENT"),
    ],
    outputs=[api.Output("LATENT", "output"), api.Output("LATENT", "denoised_output")],
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
    context: Any = None,
):
    noise = hs.RandomNoise(noise_seed) if add_noise else hs.DisabledNoise(noise_seed)
    guider = hs.Guider(model, "cfg", {"positive": positive, "negative": negative}, cfg=cfg)
    return hs.custom_sample(noise, guider, sampler, sigmas, latent_image, report=_report(context))


@api.node(
    "SamplerCustomAdvanced",
    category=CATEGORY,
    inputs=[
        api.Input("noise", "NOISE"),
        api.Input("guider", "GUIDER"),
        api.Input("sampler", "SAMPLER"),
        api.Input("sigmas", "SIGMAS"),
        api.Input("latent_image", "LATENT"),
    ],
    outputs=[api.Output("LATENT", "output"), api.Output("LATENT", "denoised_output")],
)
def sampler_custom_advanced(
    noise: Any, guider: Any, sampler: Any, sigmas: Any, latent_image: Any, context: Any = None
):
    return hs.custom_sample(noise, guider, sampler, sigmas, latent_image, report=_report(context))


@api.node(
    "KSamplerSelect",
    category=CATEGORY + "/samplers",
    inputs=[sampler_input()],
    outputs=["SAMPLER"],
)
def ksampler_select(sampler_name: str):
    return (hs.get_sampler(sampler_name),)


@api.node(
    "BasicScheduler",
    category=CATEGORY + "/schedulers",
    inputs=[
        api.Input("model", "MODEL"),
        scheduler_input(),
        api.Int("steps", 20, min=1, max=10000),
        api.Float("denoise", 1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=["SIGMAS"],
)
def basic_scheduler(model: Any, scheduler: str, steps: int, denoise: float):
    return (hs.scheduler_sigmas(model, scheduler, steps, denoise),)


@api.node(
    "KarrasScheduler",
    category=CATEGORY + "/schedulers",
    inputs=[
        api.Int("steps", 20, min=1, max=10000),
        api.Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False),
        api.Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False),
        api.Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False),
    ],
    outputs=["SIGMAS"],
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
    outputs=["SIGMAS"],
)
def exponential_scheduler(steps: int, sigma_max: float, sigma_min: float):
    return (hs.exponential_sigmas(steps, sigma_max, sigma_min),)


@api.node(
    "SDTurboScheduler",
    category=CATEGORY + "/schedulers",
    inputs=[
        api.Input("model", "MODEL"),
        api.Int("steps", 1, min=1, max=10),
        api.Float("denoise", 1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=["SIGMAS"],
)
def sd_turbo_scheduler(model: Any, steps: int, denoise: float):
    return (hs.sd_turbo_sigmas(model, steps, denoise),)


@api.node(
    "SplitSigmas",
    category=CATEGORY + "/sigmas",
    inputs=[api.Input("sigmas", "SIGMAS"), api.Int("step", 0, min=0, max=10000)],
    outputs=[api.Output("SIGMAS", "high_sigmas"), api.Output("SIGMAS", "low_sigmas")],
)
def split_sigmas(sigmas: Any, step: int):
    return hs.split_sigmas(sigmas, step)


@api.node(
    "FlipSigmas", category=CATEGORY + "/sigmas", inputs=[api.Input("sigmas", "SIGMAS")], outputs=["SIGMAS"]
)
def flip_sigmas(sigmas: Any):
    return (hs.flip_sigmas(sigmas),)


@api.node(
    "RandomNoise",
    category=CATEGORY + "/noise",
    inputs=[api.Int("noise_seed", 0, min=0, max=SEED_MAX, control_after_generate=True)],
    outputs=["NOISE"],
)
def random_noise(noise_seed: int):
    return (hs.RandomNoise(noise_seed),)


@api.node("DisableNoise", category=CATEGORY + "/noise", outputs=["NOISE"])
def disable_noise():
    return (hs.DisabledNoise(),)


@api.node(
    "BasicGuider",
    category=CATEGORY + "/guiders",
    inputs=[api.Input("model", "MODEL"), api.Input("conditioning", "CONDITIONING")],
    outputs=["GUIDER"],
)
def basic_guider(model: Any, conditioning: Any):
    return (hs.Guider(model, "basic", {"positive": conditioning}),)


@api.node(
    "CFGGuider",
    category=CATEGORY + "/guiders",
    inputs=[
        api.Input("model", "MODEL"),
        api.Input("positive", "CONDITIONING"),
        api.Input("negative", "CONDITIONING"),
        api.Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
    ],
    outputs=["GUIDER"],
)
def cfg_guider(model: Any, positive: Any, negative: Any, cfg: float):
    return (hs.Guider(model, "cfg", {"positive": positive, "negative": negative}, cfg=cfg),)


@api.node(
    "DualCFGGuider",
    category=CATEGORY + "/guiders",
    inputs=[
        api.Input("model", "MODEL"),
        api.Input("cond1", "CONDITIONING"),
        api.Input("cond2", "CONDITIONING"),
        api.Input("negative", "CONDITIONING"),
        api.Float("cfg_conds", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        api.Float("cfg_cond2_negative", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        api.Combo("style", ["regular", "nested"], default="regular"),
    ],
    outputs=["GUIDER"],
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
