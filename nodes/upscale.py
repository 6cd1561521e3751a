"""Super-resolution nodes: UpscaleModelLoader and ImageUpscaleWithModel (ESRGAN / Real-ESRGAN RRDBNet,
Real-ESRGAN compact SRVGG), with tiled inference so large images fit in memory."""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import models


@api.node(
    "UpscaleModelLoader",
    category="loaders",
    display_name="Load Upscale Model",
    inputs=[api.Combo("model_name", api.FileChoices("upscale_models"))],
    outputs=[api.UPSCALE_MODEL],
)
def upscale_model_loader(model_name: str, context: api.ExecutionContext):
    """Load an ESRGAN/Real-ESRGAN/SRVGG model (.safetensors or weights-only .pth); scale detected."""
    return (models.load_upscale_model(context.folders.full_path("upscale_models", model_name)),)


@api.node(
    "ImageUpscaleWithModel",
    category="image/upscaling",
    display_name="Upscale Image (using Model)",
    inputs=[api.Input("upscale_model", api.UPSCALE_MODEL), api.Input("image", api.IMAGE)],
    outputs=[api.IMAGE],
)
def image_upscale_with_model(upscale_model: Any, image: Any, context: api.ExecutionContext):
    """Upscale by the model's factor, in overlapping 512-pixel tiles blended without seams."""
    device = context.models.compute_device
    return (models.upscale_image(upscale_model, image, device=device, progress=context.progress),)


NODES = [upscale_model_loader, image_upscale_with_model]
