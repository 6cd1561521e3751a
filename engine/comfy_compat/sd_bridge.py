"""What comfy.sd / comfy.lora / comfy.controlnet / comfy.clip_vision run for packs: loading checkpoints into
diffgraph's MODEL / CLIP / VAE handles (registered with the runtime's model manager) and LoRA state dicts
onto clones of them.

LoRA key maps are diffgraph's (engine.diffusion.lora): LoRA module name -> the handle's module name, and
patches are diffgraph's weight patches keyed "<module>.weight", which the handles' `add_patches` takes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.execution.context import FOLDERS, MODEL_MANAGER


def manager_of(services: Mapping[str, Any]) -> Any:
    manager = services.get(MODEL_MANAGER)
    if manager is None:
        raise RuntimeError(
            "this diffgraph runtime runs no models (built with with_models=False): it cannot load checkpoints"
        )
    return manager


def embeddings_folder(services: Mapping[str, Any], embedding_directory: Any) -> Any:
    """ComfyUI passes a folder or a list of folders; diffgraph's CLIP takes one folder."""
    if isinstance(embedding_directory, str | os.PathLike):
        return embedding_directory
    if isinstance(embedding_directory, Sequence) and embedding_directory:
        existing = [d for d in embedding_directory if Path(d).is_dir()]
        return (existing or list(embedding_directory))[0]
    folders = services.get(FOLDERS)
    roots = folders.roots("embeddings") if folders is not None else []
    return next((r for r in roots if r.is_dir()), roots[0] if roots else None)


def load_checkpoint(
    services: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    output_vae: bool = True,
    output_clip: bool = True,
    embedding_directory: Any = None,
) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP or None, VAE or None) of a checkpoint file, as CheckpointLoaderSimple loads it."""
    from engine.handles import load_checkpoint_handles

    return load_checkpoint_handles(
        path,
        manager=manager_of(services),
        embeddings_folder=embeddings_folder(services, embedding_directory),
        want_vae=output_vae,
        want_clip=output_clip,
    )


# ---- LoRA ------------------------------------------------------------------------------------------


def unet_key_map(model: Any) -> dict[str, str]:
    """LoRA module name -> UNet module name, for every naming the LoRA loader knows (kohya, diffusers...)."""
    from engine.diffusion.lora import unet_key_map as keys

    return dict(keys(model.unet.state_dict().keys()))


def clip_key_map(clip: Any) -> dict[str, str]:
    from engine.diffusion.lora import text_encoder_key_map as keys

    return dict(keys(clip.patcher.module.state_dict().keys()))


def lora_patches(lora: Mapping[str, torch.Tensor], key_map: Mapping[str, str]) -> dict[str, Any]:
    """ComfyUI's comfy.lora.load_lora: the patches of a LoRA state dict for the modules `key_map` names,
    keyed "<module>.weight" / "<module>.bias" (what a handle's add_patches takes)."""
    from engine.diffusion.lora.loader import load_lora

    floats = {k: v.float() if v.is_floating_point() else v for k, v in lora.items()}
    return dict(load_lora(floats, {"model": dict(key_map)}).patches.get("model", {}))


def load_lora_for_models(
    model: Any, clip: Any, lora: Mapping[str, torch.Tensor], strength_model: float, strength_clip: float
) -> tuple[Any, Any]:
    """Clones of `model` / `clip` with a LoRA state dict's patches (a None side, or strength 0, is left as it
    is, as ComfyUI does)."""
    new_model, new_clip = model, clip
    if model is not None and strength_model != 0:
        new_model = model.clone()
        new_model.add_patches(lora_patches(lora, unet_key_map(model)), strength_model)
    if clip is not None and strength_clip != 0:
        new_clip = clip.clone()
        new_clip.add_patches(lora_patches(lora, clip_key_map(clip)), strength_clip)
    return new_model, new_clip


def calculate_weight(
    patches: Sequence[Sequence[Any]], weight: torch.Tensor, key: str = "", **_: Any
) -> torch.Tensor:
    """ComfyUI's comfy.lora.calculate_weight: `weight` with a handle's patch list for one key applied,
    each entry (strength_patch, patch, strength_model, ...): weight·strength_model + strength·delta."""
    from engine.memory.weight_patches import as_patch

    out = weight
    for entry in patches:
        strength, patch, strength_model = entry[0], entry[1], entry[2] if len(entry) > 2 else 1.0
        if strength_model != 1.0:
            out = out * strength_model
        if isinstance(patch, tuple) and len(patch) == 1:
            patch = patch[0]
        delta = as_patch(patch).delta(out)
        out = out + (strength * delta).to(out.dtype)
    return out


# ---- ControlNet / CLIP vision ----------------------------------------------------------------------------


def load_controlnet(path: str | os.PathLike[str], model: Any = None) -> Any:
    from engine.handles.adapters import load_controlnet as load

    return load(path, model)


def broadcast_image_to(tensor: torch.Tensor, target_batch_size: int, batched_number: int) -> torch.Tensor:
    """ComfyUI's broadcast_image_to: a hint batch repeated (and cut) to `target_batch_size` per cond
    chunk, then tiled `batched_number` times (cond and uncond)."""
    current = tensor.shape[0]
    if current == 1:
        return tensor
    per_batch = target_batch_size // batched_number
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        repeats = -(-per_batch // tensor.shape[0])
        tensor = torch.cat([tensor] * repeats, dim=0)[:per_batch]
    if tensor.shape[0] == target_batch_size:
        return tensor
    return torch.cat([tensor] * batched_number, dim=0)


class HandleAlias(type):
    """The metaclass of ComfyUI names for diffgraph's handle types (comfy.sd.VAE, comfy.sd.CLIP,
    comfy.model_patcher.ModelPatcher...): `isinstance(x, VAE)` is true for diffgraph's VAE handles, and
    subclasses a pack defines are ordinary classes. Building one from a state dict (ComfyUI's
    `VAE(sd=...)`) is not supported: diffgraph loads models from files (comfy.sd.load_* with a path)."""

    handle_type: type

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, cls.handle_type) or type.__instancecheck__(cls, instance)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, cls.handle_type) or type.__subclasscheck__(cls, subclass)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.__dict__.get("handle_type") is not None:  # the alias itself, not a pack's subclass
            raise NotImplementedError(
                f"comfy.{cls.__module__.split('.')[-1]}.{cls.__name__}(...) from a state dict is not supported "
                "by diffgraph; load the model from its file (a loader node, or comfy.sd.load_* with a path)"
            )
        return type.__call__(cls, *args, **kwargs)


def handle_alias(name: str, handle_type: type, module: str) -> type:
    return HandleAlias(name, (), {"handle_type": handle_type, "__module__": module})


def upscale_model_from_state_dict(state_dict: Mapping[str, torch.Tensor], name: str = "upscale model") -> Any:
    """An UPSCALE_MODEL value (what UpscaleModelLoader gives) from an upscaler's state dict."""
    from engine.diffusion.checkpoints.upscalers import load_upscaler
    from engine.handles.adapters import UpscaleModelHandle

    module, spec = load_upscaler({k: v.float() for k, v in state_dict.items()})
    return UpscaleModelHandle(module, spec, name)


# ---- diffusion models from state dicts (ComfyUI-GGUF's loader) ---------------------------------------------


def plain_weights(sd: Mapping[str, Any], operations: Any = None) -> dict[str, torch.Tensor]:
    """A state dict of ordinary tensors. Quantized tensors (ComfyUI-GGUF's GGMLTensor: raw bytes, the real
    shape in `tensor_shape`) are dequantized at load with the pack's own op class (`Linear.get_weight`),
    so diffgraph's layers get exactly the weights ComfyUI's layers dequantize to at run time (the memory
    saving of keeping them quantized is not kept)."""
    get_weight = getattr(getattr(operations, "Linear", None), "get_weight", None)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if getattr(value, "tensor_type", None) is not None and get_weight is not None:
            # Called on the class: the op reads only class settings (dequant_dtype, patch_dtype) from self.
            value = get_weight(operations.Linear, value, torch.float32)
        if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
            value = value.as_subclass(torch.Tensor)
        out[key] = value
    return out


def model_with_operations(manager: Any, sd: Mapping[str, Any], operations: Any) -> Any:
    """A UNet in the original layout built with the caller's layer operations (ComfyUI's
    model_options["custom_operations"]): the pack's own layers hold its tensors as they are (ComfyUI-GGUF's
    quantized weights stay quantized and are dequantized by its layers as they run, as in ComfyUI). None for
    another layout (diffusers keys: converted and dequantized by the caller instead)."""
    from engine.diffusion.checkpoints.detect import UNET_PREFIX
    from engine.handles.comfy_surface.loading import load_unet_with_operations
    from engine.memory.dtypes import ModelRole, choose_dtype

    if not any(k in sd for k in ("input_blocks.0.0.weight", UNET_PREFIX + "input_blocks.0.0.weight")):
        return None
    compute = choose_dtype(manager.device_info, ModelRole.UNET).compute
    return load_unet_with_operations(
        sd, operations, manager=manager, name="diffusion model", compute_dtype=compute
    )


def diffusion_model_from_state_dict(
    services: Mapping[str, Any], sd: Mapping[str, Any], model_options: Mapping[str, Any] | None = None
) -> Any:
    """ComfyUI's comfy.sd.load_diffusion_model_state_dict for SD1/SD2/SDXL UNets (original or diffusers
    layout, with or without 'model.diffusion_model.'): a MODEL handle registered with the model manager.
    Returns None for a state dict that is not such a UNet (ComfyUI's "could not detect")."""
    from engine.diffusion.checkpoints import diffusers_layout as dl
    from engine.diffusion.checkpoints.detect import UNET_PREFIX, detect_checkpoint
    from engine.diffusion.checkpoints.loader import build_unet
    from engine.handles.loading import make_model_handle
    from engine.memory.dtypes import ModelRole, choose_dtype

    manager = manager_of(services)
    operations = (model_options or {}).get("custom_operations")
    if operations is not None:
        handle = model_with_operations(manager, sd, operations)
        if handle is not None:
            return handle
    weights = plain_weights(sd, operations)
    if any(k.startswith(UNET_PREFIX) for k in weights):
        weights = dl.strip_prefix(weights, UNET_PREFIX)
    if any(k.startswith("down_blocks.") for k in weights):
        weights = dl.unet_diffusers_to_original(weights)
    if "input_blocks.0.0.weight" not in weights:
        return None
    spec = detect_checkpoint(dl.add_prefix(weights, UNET_PREFIX), filename="state dict")
    dtype = choose_dtype(manager.device_info, ModelRole.UNET).storage
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    unet = build_unet(spec.unet_config, weights, dtype=dtype, path="state dict")
    return make_model_handle(
        unet,
        manager=manager,
        family=str(spec.family),
        prediction_type=spec.prediction_type,
        inpaint=spec.is_inpaint,
        name="diffusion model",
        variant=spec.variant,
    )
