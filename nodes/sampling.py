"""KSampler and KSamplerAdvanced (ComfyUI's names, inputs, defaults and widget shapes).

The seed widgets carry `control_after_generate` (the canvas stores one extra widget value after them).
Sampler and scheduler choices come from the runtime's sampling library (`context.samplers`, plugins'
samplers included). Every step reports progress with a small latent preview (rendered only when the sink
shows previews); an interrupt raised by the progress report stops sampling.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import sampling as hs

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def seed_input(name: str, tooltip: str | None = "The random seed used for creating the noise.") -> api.Input:
    return api.Int(name, 0, min=0, max=SEED_MAX, control_after_generate=True, tooltip=tooltip, step=None)


def sampler_input() -> api.Input:
    return api.Combo("sampler_name", api.SAMPLER_CHOICES, tooltip="The sampling algorithm.")


def scheduler_input() -> api.Input:
    return api.Combo("scheduler", api.SCHEDULER_CHOICES, tooltip="How the noise levels are spaced.")


def _ksample(context: api.ExecutionContext, model: Any, **options: Any) -> tuple[Any]:
    """Both KSamplers: the runtime's sampling library, progress (and previews) to the context."""
    return (hs.ksample(model, report=context.progress, library=context.samplers, **options),)


@api.node(
    "KSampler",
    category="sampling",
    inputs=[
        api.Input("model", api.MODEL, tooltip="The model used for denoising the input latent."),
        seed_input("seed"),
        api.Int(
            "steps",
            20,
            min=1,
            max=10000,
            tooltip="The number of steps used in the denoising process.",
            step=None,
        ),
        api.Float(
            "cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."
        ),
        sampler_input(),
        scheduler_input(),
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("latent_image", api.LATENT),
        api.Float("denoise", 1.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the schedule to run."),
    ],
    outputs=[api.Output(api.LATENT, tooltip="The denoised latent.")],
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
    context: api.ExecutionContext,
    denoise: float = 1.0,
):
    """Denoise a latent with the model, guided by the positive and negative conditionings."""
    return _ksample(
        context,
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
    )


@api.node(
    "KSamplerAdvanced",
    category="sampling",
    display_name="KSampler (Advanced)",
    inputs=[
        api.Input("model", api.MODEL),
        api.Combo("add_noise", ["enable", "disable"]),
        seed_input("noise_seed"),
        api.Int("steps", 20, min=1, max=10000, step=None),
        api.Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        sampler_input(),
        scheduler_input(),
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("latent_image", api.LATENT),
        api.Int("start_at_step", 0, min=0, max=10000, step=None),
        api.Int("end_at_step", 10000, min=0, max=10000, step=None),
        api.Combo("return_with_leftover_noise", ["disable", "enable"]),
    ],
    outputs=[api.LATENT],
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
    context: api.ExecutionContext,
):
    """Run steps start_at_step..end_at_step of a `steps`-step schedule (for multi-pass workflows)."""
    return _ksample(
        context,
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
    )


NODES = [ksampler, ksampler_advanced]
