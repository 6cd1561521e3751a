"""ComfyUI's comfy.sd for custom packs: checkpoint / LoRA / CLIP / VAE loading with diffgraph's loaders.

`CLIP`, `VAE` are ComfyUI's names for diffgraph's CLIP / VAE handle types (`isinstance` works on the
values diffgraph's nodes produce). Loaders take file paths; ComfyUI's state-dict variants are reported as
unsupported when called.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import comfy.model_detection as model_detection  # type: ignore[import-not-found]  # noqa: F401 - comfy.sd has it
from engine.comfy_compat import sd_bridge as _bridge
from engine.comfy_compat.binding import current as _current
from engine.handles import ClipHandle as _ClipHandle
from engine.handles import VAEHandle as _VAEHandle
from engine.handles.clip_vision import load_checkpoint_clip_vision as _load_checkpoint_clip_vision
from engine.handles.clip_vision import load_style_model as _load_style_model

_services = _current().services

CLIP = _bridge.handle_alias("CLIP", _ClipHandle, __name__)
VAE = _bridge.handle_alias("VAE", _VAEHandle, __name__)


class CLIPType(Enum):
    """ComfyUI's text-encoder families (CLIPLoader's `type`)."""

    STABLE_DIFFUSION = 1
    STABLE_CASCADE = 2
    SD3 = 3
    STABLE_AUDIO = 4
    HUNYUAN_DIT = 5
    FLUX = 6
    MOCHI = 7
    LTXV = 8
    HUNYUAN_VIDEO = 9
    PIXART = 10
    COSMOS = 11
    LUMINA2 = 12
    WAN = 13
    HIDREAM = 14
    CHROMA = 15
    ACE = 16
    OMNIGEN2 = 17
    QWEN_IMAGE = 18
    HUNYUAN_IMAGE = 19


def load_checkpoint_guess_config(
    ckpt_path: str,
    output_vae: bool = True,
    output_clip: bool = True,
    output_clipvision: bool = False,
    embedding_directory: Any = None,
    output_model: bool = True,
    model_options: Any = None,
    te_model_options: Any = None,
) -> tuple[Any, Any, Any, Any]:
    """(MODEL, CLIP, VAE, CLIP vision) of a checkpoint file; CLIP vision: an unCLIP checkpoint's image
    encoder when asked for (None otherwise, and for files without one)."""
    model, clip, vae = _bridge.load_checkpoint(
        _services,
        ckpt_path,
        output_vae=output_vae,
        output_clip=output_clip,
        embedding_directory=embedding_directory,
    )
    vision = None
    if output_clipvision:
        vision = _load_checkpoint_clip_vision(ckpt_path, manager=_bridge.manager_of(_services))
    return (model if output_model else None), clip, vae, vision


def load_checkpoint(
    config_path: Any = None,
    ckpt_path: Any = None,
    output_vae: bool = True,
    output_clip: bool = True,
    embedding_directory: Any = None,
    state_dict: Any = None,
    config: Any = None,
) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) of a checkpoint file; the YAML config is not needed (the layout is detected)."""
    if ckpt_path is None:
        raise NotImplementedError("comfy.sd.load_checkpoint from a state dict is not supported by diffgraph")
    model, clip, vae, _ = load_checkpoint_guess_config(
        ckpt_path, output_vae, output_clip, False, embedding_directory
    )
    return model, clip, vae


def load_lora_for_models(
    model: Any, clip: Any, lora: Any, strength_model: float, strength_clip: float
) -> tuple[Any, Any]:
    """Clones of MODEL / CLIP with a LoRA state dict (comfy.utils.load_torch_file) applied."""
    return _bridge.load_lora_for_models(model, clip, lora, strength_model, strength_clip)


def load_diffusion_model(unet_path: str, model_options: Any = None) -> Any:
    """A bare diffusion model file as a MODEL (UNETLoader's loader)."""
    from engine.handles import load_unet_handle

    return load_unet_handle(unet_path, manager=_bridge.manager_of(_services))


def load_unet(unet_path: str, dtype: Any = None) -> Any:
    return load_diffusion_model(unet_path)


def load_clip(
    ckpt_paths: list[str],
    embedding_directory: Any = None,
    clip_type: Any = CLIPType.STABLE_DIFFUSION,
    model_options: Any = None,
) -> Any:
    """A text encoder file as CLIP (CLIPLoader's loader; one file, diffgraph's supported types)."""
    from engine.handles import load_clip_handle

    kind = clip_type.name.lower() if isinstance(clip_type, CLIPType) else str(clip_type)
    if len(ckpt_paths) != 1:
        raise NotImplementedError("comfy.sd.load_clip with several files is not supported by diffgraph")
    return load_clip_handle(
        ckpt_paths[0],
        manager=_bridge.manager_of(_services),
        clip_type=kind,
        embeddings_folder=_bridge.embeddings_folder(_services, embedding_directory),
    )


def load_diffusion_model_state_dict(sd: dict[str, Any], model_options: Any = None) -> Any:
    """A MODEL from a UNet state dict (SD1/SD2/SDXL); quantized tensors (ComfyUI-GGUF) are dequantized
    with `model_options["custom_operations"]`. None when the state dict is not a UNet diffgraph knows."""
    return _bridge.diffusion_model_from_state_dict(_services, sd, model_options)


def load_unet_state_dict(sd: dict[str, Any], dtype: Any = None) -> Any:
    return load_diffusion_model_state_dict(sd)


def _state_dict_loader(name: str) -> Any:
    def unsupported(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"comfy.sd.{name} (loading a model from a state dict) is not supported by diffgraph; "
            "load the model from its file"
        )

    unsupported.__name__ = name
    return unsupported


load_state_dict_guess_config = _state_dict_loader("load_state_dict_guess_config")
load_text_encoder_state_dicts = _state_dict_loader("load_text_encoder_state_dicts")


def load_style_model(ckpt_path: str) -> Any:
    """A STYLE_MODEL value (T2I-Adapter style or FLUX.1 Redux) from its file, as StyleModelLoader loads it."""
    return _load_style_model(ckpt_path, device=_bridge.manager_of(_services).compute_device)


load_gligen = _state_dict_loader("load_gligen")
save_checkpoint = _state_dict_loader("save_checkpoint")
