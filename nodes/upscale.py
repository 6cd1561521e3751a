"""Super-resolution nodes: UpscaleModelLoader and ImageUpscaleWithModel (ESRGAN / Real-ESRGAN RRDBNet,
Real-ESRGAN compact SRVGG), with tiled inference so large images fit in memory."""

from __future__ import annotations

import contextlib
from typing import Any

from engine import api
from engine.handles import adapters


@api.node(
    "UpscaleModelLoader",
    category="loaders",
    display_name="Load Upscale Model",
    inputs=[api.Combo("model_name", api.FileChoices("upscale_models"))],
    outputs=["UPSCALE_MODEL"],
)
def upscale_model_loader(model_name: str, context: Any):
    """Load an ESRGAN/Real-ESRGAN/SRVGG model (.safetensors or weights-only .pth); scale detected."""
    return (adapters.load_upscale_model(context.folders.full_path("upscale_models", model_name)),)


@api.node(
    "ImageUpscaleWithModel",
    category="image/upscaling",
    display_name="Upscale Image (using Model)",
    inputs=[api.Input("upscale_model", "UPSCALE_MODEL"), api.Input("image", "IMAGE")],
    outputs=["IMAGE"],
)
def image_upscale_with_model(upscale_model: Any, image: Any, context: Any):
    """Upscale by the model's factor, in overlapping 512-pixel tiles blended without seams."""
    device = "cpu"
    with contextlib.suppress(KeyError, AttributeError):
        device = context.service("model_manager").compute_device
    return (
        adapters.upscale_image(
            upscale_model, image, device=device, progress=lambda d, t: context.progress(d, t)
        ),
    )


NODES = [upscale_model_loader, image_upscale_with_model]
