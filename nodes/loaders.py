"""Model loader nodes: CheckpointLoaderSimple, VAELoader, CLIPLoader, UNETLoader (ComfyUI's names).

File choices are the files under the matching models/ folder, listed whenever the schema or a workflow
is validated, so new files appear without a restart. Weights are registered with the runtime's model
manager (`context.models`) and stay off the compute device until a node uses them.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import models

CLIP_TYPES = ["stable_diffusion"]  # the CLIPLoader types this engine can load (see docs/nodes.md)


def _embeddings_folder(context: api.ExecutionContext) -> Any:
    roots = context.folders.roots("embeddings")
    return next((r for r in roots if r.is_dir()), roots[0] if roots else None)


@api.node(
    "CheckpointLoaderSimple",
    category="loaders",
    display_name="Load Checkpoint",
    inputs=[
        api.Combo(
            "ckpt_name",
            api.FileChoices("checkpoints"),
            tooltip="The checkpoint (model) file to load, from models/checkpoints.",
        )
    ],
    outputs=[
        api.Output(api.MODEL, tooltip="The diffusion model, for the sampler."),
        api.Output(api.CLIP, tooltip="The text encoder, for CLIPTextEncode."),
        api.Output(api.VAE, tooltip="The autoencoder between images and latents."),
    ],
)
def checkpoint_loader_simple(ckpt_name: str, context: api.ExecutionContext):
    """Load a single-file SD1/SD2/SDXL checkpoint (or a diffusers folder)."""
    path = context.folders.full_path("checkpoints", ckpt_name)
    model, clip, vae = models.load_checkpoint_handles(
        path, manager=context.models, embeddings_folder=_embeddings_folder(context)
    )
    return (model, clip, vae)


@api.node(
    "VAELoader",
    category="loaders",
    display_name="Load VAE",
    inputs=[api.Combo("vae_name", api.FileChoices("vae"))],
    outputs=[api.VAE],
)
def vae_loader(vae_name: str, context: api.ExecutionContext):
    """Load a standalone VAE file from models/vae."""
    path = context.folders.full_path("vae", vae_name)
    return (models.load_vae_handle(path, manager=context.models),)


@api.node(
    "CLIPLoader",
    category="advanced/loaders",
    display_name="Load CLIP",
    inputs=[
        api.Combo("clip_name", api.FileChoices("text_encoders")),
        api.Combo("type", CLIP_TYPES, default="stable_diffusion"),
        api.Combo("device", ["default", "cpu"], default="default", optional=True),
    ],
    outputs=[api.CLIP],
)
def clip_loader(clip_name: str, type: str, context: api.ExecutionContext, device: str = "default"):
    """Load a standalone text encoder (CLIP-L for SD1, OpenCLIP-H for SD2) from models/text_encoders."""
    path = context.folders.full_path("text_encoders", clip_name)
    clip = models.load_clip_handle(
        path, manager=context.models, clip_type=type, embeddings_folder=_embeddings_folder(context)
    )
    return (clip,)


@api.node(
    "UNETLoader",
    category="advanced/loaders",
    display_name="Load Diffusion Model",
    inputs=[
        api.Combo("unet_name", api.FileChoices("diffusion_models")),
        api.Combo("weight_dtype", ["default"], default="default"),
    ],
    outputs=[api.MODEL],
)
def unet_loader(unet_name: str, weight_dtype: str, context: api.ExecutionContext):
    """Load a bare UNet file from models/diffusion_models (models/unet)."""
    path = context.folders.full_path("diffusion_models", unet_name)
    return (models.load_unet_handle(path, manager=context.models),)


NODES = [checkpoint_loader_simple, vae_loader, clip_loader, unet_loader]
