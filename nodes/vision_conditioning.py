"""Image-conditioning nodes, with ComfyUI's schemas: CLIPVisionLoader, CLIPVisionEncode, StyleModelLoader,
StyleModelApply, unCLIPCheckpointLoader, unCLIPConditioning, PhotoMakerLoader and PhotoMakerEncode.

The models: engine/diffusion/vision (CLIP / SigLIP towers, T2I-Adapter style and FLUX.1 Redux, unCLIP's
noise augmentation, PhotoMaker's ID encoder); the socket values: engine/handles/clip_vision.py and
engine/handles/photomaker.py.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import models

from .conditioning_extra import _set_values
from .loaders import _embeddings_folder


@api.node(
    "CLIPVisionLoader",
    category="loaders",
    display_name="Load CLIP Vision",
    inputs=[api.Combo("clip_name", api.FileChoices("clip_vision"))],
    outputs=[api.CLIP_VISION],
)
def clip_vision_loader(clip_name: str, context: api.ExecutionContext):
    """A CLIP or SigLIP vision tower from models/clip_vision (Hugging Face or OpenCLIP layout)."""
    path = context.folders.full_path("clip_vision", clip_name)
    return (models.load_clip_vision_handle(path, manager=context.models),)


@api.node(
    "CLIPVisionEncode",
    category="conditioning",
    display_name="CLIP Vision Encode",
    inputs=[
        api.Input("clip_vision", api.CLIP_VISION),
        api.Input("image", api.IMAGE),
        api.Combo("crop", ["center", "none"]),
    ],
    outputs=[api.CLIP_VISION_OUTPUT],
)
def clip_vision_encode(clip_vision: Any, image: Any, crop: str):
    """The image's CLIP vision output (image_embeds, last_hidden_state, penultimate_hidden_states...);
    "center" crops the image to a centred square before resizing, "none" squashes the whole image."""
    return (clip_vision.encode_image(image, crop=crop == "center"),)


@api.node(
    "StyleModelLoader",
    category="loaders",
    display_name="Load Style Model",
    inputs=[api.Combo("style_model_name", api.FileChoices("style_models"))],
    outputs=[api.STYLE_MODEL],
)
def style_model_loader(style_model_name: str, context: api.ExecutionContext):
    """A T2I-Adapter style model or FLUX.1 Redux from models/style_models (told apart by its keys)."""
    path = context.folders.full_path("style_models", style_model_name)
    return (models.load_style_model(path, device=context.models.compute_device),)


@api.node(
    "StyleModelApply",
    category="conditioning/style_model",
    display_name="Apply Style Model",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Input("style_model", api.STYLE_MODEL),
        api.Input("clip_vision_output", api.CLIP_VISION_OUTPUT),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.001),
        api.Combo("strength_type", ["multiply", "attn_bias"]),
    ],
    outputs=[api.CONDITIONING],
)
def style_model_apply(
    conditioning: Any, style_model: Any, clip_vision_output: Any, strength: float, strength_type: str
):
    """The style model's tokens for the image appended to every entry's prompt tokens. "multiply" scales
    them by `strength`; "attn_bias" writes log(strength) into the entries' "attention_mask" (ComfyUI's
    keys; diffgraph's models do not read that mask yet, see docs/nodes.md)."""
    return (models.apply_style_model(conditioning, style_model, clip_vision_output, strength, strength_type),)


@api.node(
    "unCLIPCheckpointLoader",
    category="loaders",
    inputs=[api.Combo("ckpt_name", api.FileChoices("checkpoints"))],
    outputs=[api.MODEL, api.CLIP, api.VAE, api.CLIP_VISION],
)
def unclip_checkpoint_loader(ckpt_name: str, context: api.ExecutionContext):
    """An unCLIP checkpoint (SD 2.1 unCLIP-L / -H) and the image encoder stored in it (None if absent)."""
    path = context.folders.full_path("checkpoints", ckpt_name)
    embeddings = _embeddings_folder(context)
    return models.load_unclip_checkpoint_handles(path, manager=context.models, embeddings_folder=embeddings)


@api.node(
    "unCLIPConditioning",
    category="conditioning",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Input("clip_vision_output", api.CLIP_VISION_OUTPUT),
        api.Float("strength", 1.0, min=-10.0, max=10.0, step=0.01),
        api.Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[api.CONDITIONING],
)
def unclip_conditioning(
    conditioning: Any, clip_vision_output: Any, strength: float, noise_augmentation: float
):
    """Appends {clip_vision_output, strength, noise_augmentation} to the entries' "unclip_conditioning"
    list (strength 0: unchanged). unCLIP models build their `y` from it (the image embedding noised to
    `noise_augmentation` of the schedule, times `strength`); SDXL uses it as its pooled vector
    ("revision"); other models ignore it, as in ComfyUI."""
    if strength == 0:
        return (conditioning,)
    item = {
        "clip_vision_output": clip_vision_output,
        "strength": strength,
        "noise_augmentation": noise_augmentation,
    }
    return (_set_values(conditioning, {"unclip_conditioning": [item]}, append=True),)


@api.node(
    "PhotoMakerLoader",
    category="_for_testing/photomaker",
    inputs=[api.Combo("photomaker_model_name", api.FileChoices("photomaker"))],
    outputs=[api.PHOTOMAKER],
    experimental=True,
)
def photomaker_loader(photomaker_model_name: str, context: api.ExecutionContext):
    """PhotoMaker's ID encoder from models/photomaker (photomaker-v1.bin: its "id_encoder" part)."""
    path = context.folders.full_path("photomaker", photomaker_model_name)
    return (models.load_photomaker(path, manager=context.models),)


@api.node(
    "PhotoMakerEncode",
    category="_for_testing/photomaker",
    inputs=[
        api.Input("photomaker", api.PHOTOMAKER),
        api.Input("image", api.IMAGE),
        api.Input("clip", api.CLIP),
        api.String("text", "photograph of photomaker", multiline=True, extra={"dynamicPrompts": True}),
    ],
    outputs=[api.CONDITIONING],
    experimental=True,
)
def photomaker_encode(photomaker: Any, image: Any, clip: Any, text: str):
    """The prompt without the word "photomaker", its class word (the word before it) fused with the identity
    of the image's first picture (SDXL)."""
    return (models.photomaker_encode(photomaker, image, clip, text),)


NODES = [
    clip_vision_loader,
    clip_vision_encode,
    style_model_loader,
    style_model_apply,
    unclip_checkpoint_loader,
    unclip_conditioning,
    photomaker_loader,
    photomaker_encode,
]
