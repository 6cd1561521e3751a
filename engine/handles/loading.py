"""Build MODEL / CLIP / VAE handles from weight files, registered with the model manager.

Weights are read in the storage dtype the memory layer chooses for each role (engine.memory.dtypes) and
stay on the offload device until a node uses them. UNet and VAE get a loader function so the manager can
drop their RAM copy under a RAM budget and re-read it from the (safetensors, memory-mapped) file later.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from engine.diffusion.checkpoints import diffusers_layout as dl
from engine.diffusion.checkpoints.detect import (
    UNET_PREFIX,
    VAE_PREFIX,
    detect_checkpoint,
)
from engine.diffusion.checkpoints.io import CheckpointError, read_state_dict
from engine.diffusion.checkpoints.loader import build_unet, load_checkpoint, load_vae
from engine.diffusion.sampling.model_sampling import model_sampling_for
from engine.diffusion.sampling.unet_variants import variant_model_sampling
from engine.diffusion.text.embeddings import EmbeddingLibrary
from engine.diffusion.vision.unclip import UnclipAdmBuilder
from engine.handles import flow_loading as flow
from engine.handles.clip import ClipHandle
from engine.handles.model import ModelHandle
from engine.handles.vae import VAEHandle
from engine.memory.dtypes import ModelRole, choose_dtype
from engine.memory.manager import ModelManager

ModelFileError = CheckpointError  # what loaders raise for unusable files: str() names the file


def _storage_dtype(manager: ModelManager, role: ModelRole) -> torch.dtype:
    return choose_dtype(manager.device_info, role).storage


def _file_loader(
    path: Path, prefix: str, module: nn.Module
) -> Callable[[], Mapping[str, torch.Tensor]] | None:
    """A function re-reading `module`'s weights from a single file (keys under `prefix`), reshaped to the
    module's shapes (1x1 convolutions stored as linear weights and vice versa)."""
    if path.is_dir() or path.suffix.lower() not in (".safetensors", ".sft"):
        return None  # pickles and diffusers folders are not re-read: keep their RAM copy
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}

    def load() -> Mapping[str, torch.Tensor]:
        sd = read_state_dict(path, keys_filter=lambda k: k.startswith(prefix), mmap=True)
        out = {}
        for key, value in sd.items():
            name = key[len(prefix) :]
            if name in shapes and tuple(value.shape) != shapes[name]:
                value = value.reshape(shapes[name])
            out[name] = value
        return out

    return load


def _display_name(path: Path) -> str:
    return path.name


def make_model_handle(
    unet: nn.Module,
    *,
    manager: ModelManager,
    family: str,
    prediction_type: str,
    inpaint: bool,
    name: str,
    loader: Callable[[], Mapping[str, torch.Tensor]] | None = None,
    variant: str = "",
) -> ModelHandle:
    managed = manager.register(unet, name=f"{name} (UNet)", loader=loader)
    channels = int(getattr(getattr(unet, "config", None), "out_channels", 4) or 4)
    sampling = variant_model_sampling(variant, prediction_type) or model_sampling_for(prediction_type)
    handle = ModelHandle(
        manager.patcher(managed),
        manager=manager,
        model_sampling=sampling,
        family=family,
        inpaint_concat=inpaint,
        latent_channels=channels,
        name=name,
        variant=variant,
    )
    adm = getattr(getattr(unet, "config", None), "adm_in_channels", None)
    if handle.adm_builder is None and adm and not variant:
        # An ADM input outside SDXL: SD2.1 unCLIP, whose y comes from "unclip_conditioning".
        handle.adm_builder = UnclipAdmBuilder(int(adm))
    return handle


def _in_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    # Loaders already read weights in the role's dtype; this covers modules built some other way.
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module = module.to(dtype)
    return module


def make_vae_handle(
    vae: nn.Module,
    *,
    manager: ModelManager,
    name: str,
    loader: Callable[[], Mapping[str, torch.Tensor]] | None = None,
) -> VAEHandle:
    vae = _in_dtype(vae, _storage_dtype(manager, ModelRole.VAE))
    managed = manager.register(vae, name=f"{name} (VAE)", loader=loader)
    return VAEHandle(manager.patcher(managed), manager=manager, name=name)


def make_clip_handle(
    encoder: nn.Module, *, manager: ModelManager, name: str, embeddings_folder: str | os.PathLike[str] | None
) -> ClipHandle:
    encoder = _in_dtype(encoder, _storage_dtype(manager, ModelRole.TEXT_ENCODER))
    managed = manager.register(encoder, name=f"{name} (text encoder)")
    library = EmbeddingLibrary(embeddings_folder) if embeddings_folder is not None else None
    return ClipHandle(manager.patcher(managed), manager=manager, embeddings=library, name=name)


def load_checkpoint_handles(
    path: str | os.PathLike[str],
    *,
    manager: ModelManager,
    embeddings_folder: str | os.PathLike[str] | None = None,
    prediction_type: str | None = None,
    want_vae: bool = True,
    want_clip: bool = True,
    text_encoder_folders: Sequence[str | os.PathLike[str]] = (),
) -> tuple[ModelHandle, ClipHandle | None, VAEHandle | None]:
    """(MODEL, CLIP, VAE) of a single-file checkpoint (or diffusers folder); SD3/SD3.5 and FLUX.1 files
    go to `flow_loading` (`text_encoder_folders`: where their T5 vocabulary may be, see there).

    CLIP / VAE are None when the file has none (or when not wanted); a node that needs them then raises
    `VAEMissingError` through `engine.handles.require_vae`. Raises CheckpointError (naming the file) for
    unusable files.
    """
    p = Path(path)
    if flow.is_flow_file(p) or flow.is_flow_diffusers_folder(p):
        return flow.load_flow_checkpoint_handles(
            p,
            manager=manager,
            embeddings_folder=embeddings_folder,
            text_encoder_folders=text_encoder_folders,
            want_vae=want_vae,
            want_clip=want_clip,
        )
    components = ["unet"] + (["text"] if want_clip else []) + (["vae"] if want_vae else [])
    # Each component is read straight into its role's storage dtype: reading everything in the UNet's
    # (bf16, fp8) and casting VAE / text encoder back up would round their weights.
    dtypes = {
        "unet": _storage_dtype(manager, ModelRole.UNET),
        "vae": _storage_dtype(manager, ModelRole.VAE),
        "text": _storage_dtype(manager, ModelRole.TEXT_ENCODER),
    }
    ck = load_checkpoint(p, dtypes=dtypes, prediction_type=prediction_type, components=components)
    spec = ck.spec
    name = _display_name(p)
    model = make_model_handle(
        ck.unet,
        manager=manager,
        family=str(spec.family),
        prediction_type=spec.prediction_type,
        inpaint=spec.is_inpaint,
        name=name,
        loader=_file_loader(p, UNET_PREFIX, ck.unet),
        variant=spec.variant,
    )
    clip = vae = None
    if ck.text_encoder is not None:
        clip = make_clip_handle(
            ck.text_encoder, manager=manager, name=name, embeddings_folder=embeddings_folder
        )
    if ck.vae is not None:
        vae = make_vae_handle(
            ck.vae, manager=manager, name=name, loader=_file_loader(p, spec.vae_prefix, ck.vae)
        )
        model.vae_downscale = vae.downscale
    return model, clip, vae


def load_vae_handle(path: str | os.PathLike[str], *, manager: ModelManager) -> VAEHandle:
    """A standalone VAE file (original or diffusers layout, with or without 'first_stage_model.')."""
    p = Path(path)
    vae = load_vae(p, dtype=_storage_dtype(manager, ModelRole.VAE))
    return make_vae_handle(vae, manager=manager, name=p.name)


def load_clip_handle(
    path: str | os.PathLike[str],
    *,
    manager: ModelManager,
    clip_type: str = "stable_diffusion",
    embeddings_folder: str | os.PathLike[str] | None = None,
) -> ClipHandle:
    """A standalone text-encoder file for CLIPLoader.

    Supported (type "stable_diffusion"): an OpenAI CLIP-L text model in Hugging Face layout
    (`text_model.*` keys, as in SD1's `text_encoder/model.safetensors`) -> SD1 conditioning, and an
    OpenCLIP ViT-H text tower in open_clip layout (`transformer.resblocks.*`, `token_embedding.weight`)
    -> SD2 conditioning. Other types (sd3, stable_cascade, flux, ...) are refused with a clear message.
    """
    from engine.diffusion.checkpoints import clip_text as cm
    from engine.diffusion.text.encoder import SDTextEncoder

    p = Path(path)
    if clip_type in flow.FLOW_CLIP_TYPES:
        return flow.load_text_encoders_handle(
            [p], manager=manager, clip_type=clip_type, embeddings_folder=embeddings_folder
        )
    if clip_type not in ("stable_diffusion", "sd1", "sd2"):
        raise CheckpointError(
            p,
            f"CLIPLoader type {clip_type!r} is not supported here; only 'stable_diffusion' text encoders "
            "(CLIP-L for SD1, OpenCLIP-H for SD2) can be loaded on their own",
        )
    dtype = _storage_dtype(manager, ModelRole.TEXT_ENCODER)
    sd = read_state_dict(p, dtype=dtype)
    for prefix in ("cond_stage_model.transformer.", "cond_stage_model.model.", "transformer."):
        if any(k.startswith(prefix + ("text_model." if "transformer" in prefix else "")) for k in sd):
            sd = dl.strip_prefix(sd, prefix)
            break
    try:
        if "text_model.embeddings.token_embedding.weight" in sd:
            encoder = SDTextEncoder.for_sd1(cm.build_clip_text_model(sd, dtype=dtype))
        elif "token_embedding.weight" in sd and any(k.startswith("transformer.resblocks.") for k in sd):
            encoder = SDTextEncoder.for_sd2(cm.build_openclip_text_model(sd, dtype=dtype))
        else:
            sample = ", ".join(sorted(sd)[:4])
            raise CheckpointError(
                p,
                "not a CLIP text encoder this loader knows: expected 'text_model.embeddings.token_embedding"
                f".weight' (Hugging Face CLIP-L) or OpenCLIP keys ('transformer.resblocks.*'); keys start: {sample}",
            )
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(p, f"cannot build the text encoder: {e}") from None
    return make_clip_handle(encoder, manager=manager, name=p.name, embeddings_folder=embeddings_folder)


def load_unet_handle(
    path: str | os.PathLike[str],
    *,
    manager: ModelManager,
    prediction_type: str | None = None,
    weight_dtype: str = "default",
) -> ModelHandle:
    """A bare UNet file for UNETLoader: original layout (`input_blocks.*`, with or without
    'model.diffusion_model.') or diffusers layout (`down_blocks.*`). The family is inferred from the UNet
    alone (cross-attention width and ADM size), so only real-sized SD1/SD2/SDXL UNets are recognised."""
    p = Path(path)
    if flow.is_flow_file(p):  # SD3/SD3.5 and FLUX.1 transformers; weight_dtype: see flow_loading
        return flow.load_flow_unet_handle(p, manager=manager, weight_dtype=weight_dtype)
    if flow.fp8_storage_for(weight_dtype) is not None:
        # The UNet reads its dtype from its first layer, which fp8 storage would make an fp8 input cast.
        raise CheckpointError(
            p,
            f"weight_dtype {weight_dtype!r} is supported for SD3/SD3.5 and FLUX.1 models; use 'default' here",
        )
    dtype = _storage_dtype(manager, ModelRole.UNET)
    sd = read_state_dict(p, dtype=dtype)
    if any(k.startswith(UNET_PREFIX) for k in sd):
        sd = dl.strip_prefix(sd, UNET_PREFIX)
    if any(k.startswith("down_blocks.") for k in sd):
        try:
            sd = dl.unet_diffusers_to_original(sd)
        except ValueError as e:
            raise CheckpointError(p, f"diffusers-layout UNet could not be converted: {e}") from None
    if "input_blocks.0.0.weight" not in sd:
        raise CheckpointError(p, "not a UNet: 'input_blocks.0.0.weight' is missing")
    spec = detect_checkpoint(dl.add_prefix(sd, UNET_PREFIX), filename=p, prediction_type=prediction_type)
    unet = build_unet(spec.unet_config, sd, dtype=dtype, path=str(p))
    return make_model_handle(
        unet,
        manager=manager,
        family=str(spec.family),
        prediction_type=spec.prediction_type,
        inpaint=spec.is_inpaint,
        name=p.name,
        loader=None,
        variant=spec.variant,
    )


__all__ = [
    "ModelFileError",
    "VAE_PREFIX",
    "load_checkpoint_handles",
    "load_clip_handle",
    "load_unet_handle",
    "load_vae_handle",
]
