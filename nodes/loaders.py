"""Model loader nodes: CheckpointLoaderSimple, VAELoader, CLIPLoader, DualCLIPLoader, TripleCLIPLoader,
UNETLoader (ComfyUI's names). SD3/SD3.5 and FLUX.1 files load through the same nodes (engine.handles
.flow_loading): the file's keys say which family it is.

File choices are the files under the matching models/ folder, listed whenever the schema or a workflow
is validated, so new files appear without a restart. Weights are registered with the runtime's model
manager (`context.models`) and stay off the compute device until a node uses them.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import models

# ComfyUI's type choices. Loadable: stable_diffusion (SD1 CLIP-L, SD2 OpenCLIP-H), sd3 (any of CLIP-L,
# CLIP-G, T5-XXL), flux (CLIP-L + T5-XXL), sdxl (CLIP-L + CLIP-G); the others name families this engine
# does not have and are refused by name when the node runs.
CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2",
    "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image",
]  # fmt: skip
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
LOADABLE_CLIP_TYPES = {"stable_diffusion", "sd3", "flux", "sdxl"}
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def _text_encoder_folders(context: api.ExecutionContext) -> list[Any]:
    # Where the T5 vocabulary of SD3 / Flux text encoders may be (a t5_tokenizer/ folder in each).
    return list(context.folders.roots("text_encoders"))


def _check_clip_type(node: str, clip_type: str) -> None:
    if clip_type not in LOADABLE_CLIP_TYPES:
        raise ValueError(
            f"{node}: type {clip_type!r} is not supported by this engine (its model family is not implemented); "
            f"supported: {', '.join(sorted(LOADABLE_CLIP_TYPES))}"
        )


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
    """Load a single-file SD1/SD2/SDXL, SD3/SD3.5 or FLUX.1 checkpoint (or a diffusers folder)."""
    path = context.folders.full_path("checkpoints", ckpt_name)
    model, clip, vae = models.load_checkpoint_handles(
        path,
        manager=context.models,
        embeddings_folder=_embeddings_folder(context),
        text_encoder_folders=_text_encoder_folders(context),
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
        api.Combo("type", CLIP_TYPES),
        api.Combo("device", ["default", "cpu"], optional=True, extra={"advanced": True}),
    ],
    outputs=[api.CLIP],
)
def clip_loader(clip_name: str, type: str, context: api.ExecutionContext, device: str = "default"):
    """Load a standalone text encoder from models/text_encoders: CLIP-L (SD1) or OpenCLIP-H (SD2) as
    stable_diffusion, one of SD3's three encoders as sd3."""
    _check_clip_type("CLIPLoader", type)
    return (_load_text_encoders(context, [clip_name], type),)


def _load_text_encoders(context: api.ExecutionContext, names: list[str], clip_type: str) -> Any:
    paths = [context.folders.full_path("text_encoders", name) for name in names]
    if clip_type == "stable_diffusion":
        return models.load_clip_handle(
            paths[0],
            manager=context.models,
            clip_type=clip_type,
            embeddings_folder=_embeddings_folder(context),
        )
    return models.load_text_encoders_handle(
        paths,
        manager=context.models,
        clip_type=clip_type,
        embeddings_folder=_embeddings_folder(context),
        text_encoder_folders=_text_encoder_folders(context),
    )


@api.node(
    "DualCLIPLoader",
    category="advanced/loaders",
    display_name="DualCLIPLoader",
    inputs=[
        api.Combo("clip_name1", api.FileChoices("text_encoders")),
        api.Combo("clip_name2", api.FileChoices("text_encoders")),
        api.Combo("type", DUAL_CLIP_TYPES),
        api.Combo("device", ["default", "cpu"], optional=True, extra={"advanced": True}),
    ],
    outputs=[api.CLIP],
)
def dual_clip_loader(
    clip_name1: str, clip_name2: str, type: str, context: api.ExecutionContext, device: str = "default"
):
    """Two text encoders as one CLIP: sdxl (clip_l + clip_g), sd3 (two of clip_l, clip_g, t5xxl), flux
    (clip_l + t5xxl). Each file's kind is read from its weights, so the order does not matter."""
    _check_clip_type("DualCLIPLoader", type)
    return (_load_text_encoders(context, [clip_name1, clip_name2], type),)


@api.node(
    "TripleCLIPLoader",
    category="advanced/loaders",
    inputs=[
        api.Combo("clip_name1", api.FileChoices("text_encoders")),
        api.Combo("clip_name2", api.FileChoices("text_encoders")),
        api.Combo("clip_name3", api.FileChoices("text_encoders")),
    ],
    outputs=[api.CLIP],
)
def triple_clip_loader(clip_name1: str, clip_name2: str, clip_name3: str, context: api.ExecutionContext):
    """SD3's three text encoders (clip_l, clip_g, t5xxl, in any order) as one CLIP."""
    return (_load_text_encoders(context, [clip_name1, clip_name2, clip_name3], "sd3"),)


@api.node(
    "UNETLoader",
    category="advanced/loaders",
    display_name="Load Diffusion Model",
    inputs=[
        api.Combo("unet_name", api.FileChoices("diffusion_models")),
        api.Combo("weight_dtype", WEIGHT_DTYPES),
    ],
    outputs=[api.MODEL],
)
def unet_loader(unet_name: str, weight_dtype: str, context: api.ExecutionContext):
    """Load a diffusion model from models/diffusion_models (models/unet): an SD1/SD2/SDXL UNet or an
    SD3/SD3.5 / FLUX.1 transformer. fp8 weight dtypes store the matmul weights in fp8 and compute each
    layer in the default dtype (fp8_e4m3fn_fast is stored as fp8_e4m3fn: no fp8 matmuls)."""
    path = context.folders.full_path("diffusion_models", unet_name)
    return (models.load_unet_handle(path, manager=context.models, weight_dtype=weight_dtype),)


NODES = [
    checkpoint_loader_simple,
    vae_loader,
    clip_loader,
    dual_clip_loader,
    triple_clip_loader,
    unet_loader,
]
