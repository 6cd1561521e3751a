"""Answers for ComfyUI's `comfy.model_management` from the runtime's DEVICE and MODEL_MANAGER services.

A runtime built without models (`with_models=False`) has neither: everything then answers for the CPU
in float32 and loading requests are no-ops, so packs still import and their non-model nodes run.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.comfy_compat.binding import current_or_none
from engine.execution.context import DEVICE, MODEL_MANAGER
from engine.memory.devices import device_memory, empty_cache
from engine.memory.patcher import ModelPatcher

CPU = torch.device("cpu")


def device_info() -> Any:
    binding = current_or_none()
    return binding.services.get(DEVICE) if binding is not None else None


def model_manager() -> Any:
    binding = current_or_none()
    return binding.services.get(MODEL_MANAGER) if binding is not None else None


def compute_device() -> torch.device:
    info = device_info()
    return info.compute_device if info is not None else CPU


def offload_device() -> torch.device:
    info = device_info()
    return info.offload_device if info is not None else CPU


def vae_device() -> torch.device:
    info = device_info()
    if info is None:
        return CPU
    return info.vae_device or info.compute_device


def free_memory_bytes(device: Any = None) -> int:
    return device_memory(torch.device(device) if device is not None else compute_device())[0]


def total_memory_bytes(device: Any = None) -> int:
    target = torch.device(device) if device is not None else compute_device()
    info = device_info()
    if info is not None and target == info.compute_device:
        return int(info.total_memory)
    return device_memory(target)[1]


def role_dtype(role: str) -> torch.dtype:
    """The (storage) dtype diffgraph picks for "unet", "text_encoder" or "vae" on this device."""
    info = device_info()
    if info is None:
        return torch.float32
    from engine.memory.dtypes import ModelRole, choose_dtype

    return choose_dtype(info, ModelRole(role)).storage


def supports(dtype: torch.dtype) -> bool:
    info = device_info()
    if info is None or dtype == torch.float32:
        return dtype == torch.float32
    if dtype == torch.float16:
        return bool(info.supports_fp16)
    if dtype == torch.bfloat16:
        return bool(info.supports_bf16)
    return False


def _patchers(item: Any) -> Any:
    """The engine patcher (or managed model) behind what ComfyUI packs pass to load_models_gpu: one of
    ours, a MODEL/CLIP/VAE handle (`.patcher`), or a ComfyUI-style wrapper around one."""
    from engine.memory.manager import ManagedModel

    for candidate in (item, getattr(item, "patcher", None), getattr(item, "model_patcher", None)):
        if isinstance(candidate, ModelPatcher | ManagedModel):
            return candidate
    return None


def load_models(models: Any, memory_required: int = 0) -> int:
    """Load each model (its patches applied) through the model manager; returns how many were loaded.
    Objects that are not diffgraph models are skipped (ComfyUI would fail on them too, later)."""
    manager = model_manager()
    if manager is None:
        return 0
    loaded = 0
    for item in models:
        target = _patchers(item)
        if target is None:
            continue
        owner = getattr(item, "manager", None) or manager
        owner.load(target, extra_bytes=int(memory_required or 0))
        loaded += 1
    return loaded


def loaded_models() -> list[Any]:
    manager = model_manager()
    return list(manager.loaded_models()) if manager is not None else []


def unload_all() -> None:
    manager = model_manager()
    if manager is not None:
        manager.unload_all()


def free_memory(bytes_needed: int, keep: Any = ()) -> int:
    manager = model_manager()
    if manager is None:
        return 0
    kept = [t for t in (_patchers(k) for k in keep) if t is not None]
    handles = [getattr(t, "handle", t) for t in kept]
    return int(manager.free_memory(int(bytes_needed), keep=[h for h in handles if h is not None]))


def soft_empty_cache() -> None:
    empty_cache(compute_device())
