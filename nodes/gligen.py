"""GLIGEN (grounded generation with boxes): GLIGENLoader and GLIGENTextBoxApply, with ComfyUI's schemas.

The model and how it patches the UNet: engine/diffusion/models/gligen.py; the boxes travel on the
conditioning as ComfyUI's "gligen" entry (engine/diffusion/sampling/gligen_cond.py).
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import gligen as gligen_api


@api.node(
    "GLIGENLoader",
    category="loaders",
    inputs=[api.Combo("gligen_name", api.FileChoices("gligen"))],
    outputs=[api.GLIGEN],
)
def gligen_loader(gligen_name: str, context: api.ExecutionContext):
    """A GLIGEN model from models/gligen (position net + one gated self-attention per UNet transformer)."""
    return (gligen_api.load_gligen(context.folders.full_path("gligen", gligen_name)),)


@api.node(
    "GLIGENTextBoxApply",
    category="conditioning/gligen",
    inputs=[
        api.Input("conditioning_to", api.CONDITIONING),
        api.Input("clip", api.CLIP),
        api.Input("gligen_textbox_model", api.GLIGEN),
        api.String("text", None, multiline=True, extra={"dynamicPrompts": True}),
        api.Int("width", 64, min=8, max=api.MAX_RESOLUTION, step=8),
        api.Int("height", 64, min=8, max=api.MAX_RESOLUTION, step=8),
        api.Int("x", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("y", 0, min=0, max=api.MAX_RESOLUTION, step=8),
    ],
    outputs=[api.CONDITIONING],
)
def gligen_textbox_apply(
    conditioning_to: Any,
    clip: Any,
    gligen_textbox_model: Any,
    text: str,
    width: int,
    height: int,
    x: int,
    y: int,
):
    """Place `text` in the box (x, y, width, height; pixels): the phrase's unprojected pooled CLIP vector
    and the box in latent pixels (// 8) are appended to the entries' "gligen" list; the sampler runs the
    GLIGEN fusers on the UNet's transformer blocks with them (the negative side takes the positive's boxes)."""
    return (
        gligen_api.gligen_textbox(conditioning_to, clip, gligen_textbox_model, text, width, height, x, y),
    )


NODES = [gligen_loader, gligen_textbox_apply]
