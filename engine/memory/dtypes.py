"""Storage and compute dtypes per model role, chosen from the device's capabilities and the user's flags.

Facts the defaults rest on (the same ones ComfyUI's model management encodes):
- the SD1.x/SD2.x and SDXL KL-VAEs overflow in float16 (activations in the decoder's up-blocks exceed
  65504 and become inf/NaN, i.e. black images); bfloat16 has float32's exponent range and is safe, so the
  VAE runs in bf16 where the device computes bf16 natively (CUDA compute capability >= 8) and in fp32
  elsewhere. fp16 only when the user asks (--vae-dtype fp16), e.g. for the community "fp16-fix" SDXL VAE;
- UNet and text encoders run in fp16 on GPUs with usable fp16 arithmetic (CUDA >= 6.x, Apple MPS) and in
  fp32 on the CPU (half-precision CPU kernels are slow and accumulate poorly);
- float8 (e4m3fn / e5m2) is a storage format only: weights are kept in fp8 (half of fp16's memory) and
  cast per layer to the compute dtype when the layer runs (`casting.CastHook`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engine.memory.casting import HookSet, cast_on_forward, iter_units
from engine.memory.devices import DeviceInfo

FP8_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)
)


class ModelRole(enum.Enum):
    UNET = "unet"
    TEXT_ENCODER = "text_encoder"
    VAE = "vae"


@dataclass(frozen=True)
class DtypeChoice:
    """`storage`: dtype of the weights in memory; `compute`: dtype layers run in (differs for fp8 storage
    or for half-precision weights on a device that computes in fp32)."""

    storage: torch.dtype
    compute: torch.dtype

    @property
    def needs_cast(self) -> bool:
        return self.storage != self.compute


# Preference order of compute dtypes per role when the user did not choose. The KL-VAE leaves fp16 out.
DEFAULT_PREFERENCES: dict[ModelRole, tuple[torch.dtype, ...]] = {
    ModelRole.UNET: (torch.float16, torch.bfloat16, torch.float32),
    ModelRole.TEXT_ENCODER: (torch.float16, torch.bfloat16, torch.float32),
    ModelRole.VAE: (torch.bfloat16, torch.float32),
}


def device_computes(info: DeviceInfo, dtype: torch.dtype) -> bool:
    """Whether layers can run in `dtype` on the compute device at a reasonable speed and accuracy."""
    if dtype == torch.float32:
        return True
    if dtype == torch.float16:
        return info.supports_fp16
    if dtype == torch.bfloat16:
        return info.supports_bf16
    return False  # fp8 is never a compute dtype here (storage only)


def compute_dtype_for(
    info: DeviceInfo, storage: torch.dtype, preferences: Sequence[torch.dtype]
) -> torch.dtype:
    """The dtype to run weights stored as `storage` in."""
    if device_computes(info, storage):
        return storage
    for dtype in preferences:
        if device_computes(info, dtype):
            return dtype
    return torch.float32


def choose_dtype(
    info: DeviceInfo,
    role: ModelRole,
    *,
    supported: Iterable[torch.dtype] | None = None,
) -> DtypeChoice:
    """Pick storage and compute dtypes for a model of `role`.

    `supported`: dtypes the model family tolerates, in preference order (e.g. a VAE known to be fp16-safe
    passes (fp16, bf16, fp32)); defaults to DEFAULT_PREFERENCES. An explicit per-role flag always wins;
    --force-fp32 beats automatic choices but not an explicit flag.
    """
    options = info.options
    preferences = tuple(supported) if supported is not None else DEFAULT_PREFERENCES[role]
    explicit = {
        ModelRole.UNET: options.unet_dtype,
        ModelRole.TEXT_ENCODER: options.text_encoder_dtype,
        ModelRole.VAE: options.vae_dtype,
    }[role]
    if role is ModelRole.VAE and options.cpu_vae:
        # The VAE runs on the CPU then: fp32 unless the user chose something else.
        storage = explicit or torch.float32
        return DtypeChoice(storage, storage if storage in (torch.float32, torch.bfloat16) else torch.float32)
    if explicit is not None:
        compute_prefs = tuple(d for d in preferences if d not in FP8_DTYPES)
        return DtypeChoice(explicit, compute_dtype_for(info, explicit, compute_prefs))
    if options.force_fp32:
        return DtypeChoice(torch.float32, torch.float32)
    if options.force_fp16 and role is not ModelRole.VAE and info.supports_fp16:
        return DtypeChoice(torch.float16, torch.float16)
    for dtype in preferences:
        if dtype in FP8_DTYPES:
            continue
        if device_computes(info, dtype):
            return DtypeChoice(dtype, dtype)
    return DtypeChoice(torch.float32, torch.float32)


STORAGE_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def store_weights_as(
    model: nn.Module,
    storage: torch.dtype,
    *,
    layer_types: tuple[type[nn.Module], ...] = STORAGE_LAYER_TYPES,
) -> int:
    """Convert the `.weight` of matmul/conv layers to `storage` in place (biases, norms and embeddings keep
    their dtype: they are small and fp8 would cost accuracy for no memory). Returns how many were converted.
    Run the model through `cast_on_forward` (or register it with the manager with `compute_dtype=`)."""
    converted = 0
    for _, unit in iter_units(model):
        if isinstance(unit, layer_types) and getattr(unit, "weight", None) is not None:
            weight = unit.weight
            weight.data = weight.data.to(storage)
            converted += 1
    return converted


def fp8_storage(model: nn.Module, storage: torch.dtype, compute: torch.dtype) -> HookSet:
    """Store Linear/Conv weights of `model` in `storage` (an fp8 dtype) and compute in `compute`."""
    if storage not in FP8_DTYPES:
        raise ValueError(f"{storage} is not a float8 dtype (available: {FP8_DTYPES or 'none in this torch'})")
    store_weights_as(model, storage)
    return cast_on_forward(model, compute)
