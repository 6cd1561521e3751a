"""ControlNet nodes: ControlNetLoader, DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced.

ControlNetLoader also loads T2I-Adapters (detected from the file), as in ComfyUI. Applying puts the
control under each CONDITIONING entry's "control" option, chained onto a control already there.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import models


@api.node(
    "ControlNetLoader",
    category="loaders",
    display_name="Load ControlNet Model",
    inputs=[api.Combo("control_net_name", api.FileChoices("controlnet"))],
    outputs=[api.CONTROL_NET],
)
def controlnet_loader(control_net_name: str, context: api.ExecutionContext):
    """Load a ControlNet (SD1/SD2/SDXL, single-file or diffusers layout) or a T2I-Adapter."""
    return (models.load_controlnet(context.folders.full_path("controlnet", control_net_name)),)


@api.node(
    "DiffControlNetLoader",
    category="loaders",
    display_name="Load ControlNet Model (diff)",
    inputs=[api.Input("model", api.MODEL), api.Combo("control_net_name", api.FileChoices("controlnet"))],
    outputs=[api.CONTROL_NET],
)
def diff_controlnet_loader(model: Any, control_net_name: str, context: api.ExecutionContext):
    """Load a ControlNet stored as a difference to a base model (added to `model`'s UNet weights)."""
    return (models.load_controlnet(context.folders.full_path("controlnet", control_net_name), model),)


@api.node(
    "ControlNetApply",
    category="conditioning/controlnet",
    display_name="Apply ControlNet (OLD)",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Input("control_net", api.CONTROL_NET),
        api.Input("image", api.IMAGE),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[api.CONDITIONING],
    deprecated=True,
)
def controlnet_apply(conditioning: Any, control_net: Any, image: Any, strength: float):
    """Apply a ControlNet to one conditioning (prefer ControlNetApplyAdvanced: positive and negative)."""
    if strength == 0:
        return (conditioning,)
    return (models.apply_controlnet(conditioning, control_net, image, strength),)


@api.node(
    "ControlNetApplyAdvanced",
    category="conditioning/controlnet",
    display_name="Apply ControlNet",
    inputs=[
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("control_net", api.CONTROL_NET),
        api.Input("image", api.IMAGE),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
        api.Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
        api.Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001),
        api.Input("vae", api.VAE, optional=True),
    ],
    outputs=[api.Output(api.CONDITIONING, "positive"), api.Output(api.CONDITIONING, "negative")],
)
def controlnet_apply_advanced(
    positive: Any,
    negative: Any,
    control_net: Any,
    image: Any,
    strength: float,
    start_percent: float,
    end_percent: float,
    vae: Any = None,
):
    """Apply a ControlNet / T2I-Adapter to both conditionings over a fraction of the steps."""
    if strength == 0:
        return (positive, negative)
    cache: dict[int, Any] = {}
    args = (control_net, image, strength, start_percent, end_percent, cache)
    return (
        models.apply_controlnet(positive, *args, vae=vae),
        models.apply_controlnet(negative, *args, vae=vae),
    )


NODES = [controlnet_loader, diff_controlnet_loader, controlnet_apply, controlnet_apply_advanced]
