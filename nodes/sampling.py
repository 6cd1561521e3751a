"""KSampler and KSamplerAdvanced (ComfyUI's names, inputs, defaults and widget shapes).

The seed widgets carry `control_after_generate` (the canvas stores one extra widget value after them).
Sampler and scheduler choices come from the sampling registries. Every step reports progress with a small
latent preview; an interrupt raised by the progress report stops sampling.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.handles import sampling as hs

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def seed_input(name: str) -> api.Input:
    return api.Int(
        name,
        0,
        min=0,
        max=SEED_MAX,
        control_after_generate=True,
        tooltip="The random seed used for creating the noise.",
    )


def sampler_input() -> api.Input:
    return api.Combo("sampler_name", hs.sampler_names, default="euler", tooltip="The sampling algorithm.")


def scheduler_input() -> api.Input:
    return api.Combo(
        "scheduler", hs.scheduler_names, default="normal", tooltip="How the noise levels are spaced."
    )


def _report(context: Any) -> Any:
    return context.progress if context is not None else None


@api.node(
    "KSampler",
    category="sampling",
    inputs=[
        api.Input("model", "MODEL", tooltip="The model used for denoising the input latent."),
        seed_input("seed"),
        api.Int("steps", 20, min=1, max=10000, tooltip="The number of steps used in the denoising process."),
        api.Float(
            "cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."
        ),
        sampler_input(),
        scheduler_input(),
        api.Input("positive", "CONDITIONING"),
        api.Input("negative", "CONDITIONING"),
        api.Input("latent_image", "LATENT"),
        api.Float("denoise", 1.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the schedule to run."),
    ],
    outputs=[api.Output("LATENT", tooltip="The denoised latent.")],
)
def ksampler(
    model: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Any,
    negative: Any,
    latent_image: Any,
    denoise: float = 1.0,
    context: Any = None,
):
    """Denoise a latent with the model, guided by the positive and negative conditionings."""
    out = hs.ksample(
        model,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        positive=positive,
        negative=negative,
        latent=latent_image,
        denoise=denoise,
        report=_report(context),
    )
    return (out,)


@api.node(
    "KSamplerAdvanced",
    category="sampling",
    display_name="KSampler (Advanced)",
    inputs=[
        api.Input("model", "MODEL"),
        api.Combo("add_noise", ["enable", "disable"], default="enable"),
        seed_input("noise_seed"),
        api.Int("steps", 20, min=1, max=10000),
        api.Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        sampler_input(),
        scheduler_input(),
        api.Input("positive", "CONDITIONING"),
        api.Input("negative", "CONDITIONING"),
        api.Input("latent_image", "LATENT"),
        api.Int("start_at_step", 0, min=0, max=10000),
        api.Int("end_at_step", 10000, min=0, max=10000),
        api.Combo("return_with_leftover_noise", ["disable", "enable"], default="disable"),
    ],
    outputs=["LATENT"],
)
def ksampler_advanced(
    model: Any,
    add_noise: str,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Any,
    negative: Any,
    latent_image: Any,
    start_at_step: int,
    end_at_step: int,
    return_with_leftover_noise: str,
    context: Any = None,
):
    """Run steps start_at_step..end_at_step of a `steps`-step schedule (for multi-pass workflows)."""
    out = hs.ksample(
        model,
        seed=noise_seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        positive=positive,
        negative=negative,
        latent=latent_image,
        add_noise=add_noise == "enable",
        start_step=start_at_step,
        last_step=end_at_step,
        force_full_denoise=return_with_leftover_noise != "enable",
        report=_report(context),
    )
    return (out,)


NODES = [ksampler, ksampler_advanced]
