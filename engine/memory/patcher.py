"""Weight patches (the mechanism LoRA and similar adapters use) and cheap model clones.

A `ModelPatcher` wraps a base module. `clone()` gives another patcher over the *same* module and weights
with its own patch list, so a graph can hold many LoRA combinations of one checkpoint without copying it.
Patches are applied when the model is loaded for use (by the ModelManager, or by `apply()` directly) and
removed exactly when it is unloaded or another clone with a different patch set is used: the original
tensors are kept aside and restored bit for bit (no arithmetic undo, hence no drift however many cycles).

The patch kinds themselves live in `engine.memory.weight_patches`. A patcher does not know the model
manager: the manager creates patchers (`ModelManager.patcher`) over the models it registered and applies
their patches when it loads them.

Patch list layout per parameter key (ComfyUI's): `[(strength_patch, patch, strength_model), ...]`; the new
weight is `W * strength_model + strength_patch * patch.delta(W)`, applied in list order, in float32, then
cast back to the parameter's dtype (`weight_patches.apply_patch`: a `GrowPatch` zero-pads W to a larger shape
first, a `SetPatch` replaces it).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.kernels.layers import release_kernel_caches
from engine.memory.weight_patches import WeightPatch, apply_patch, as_patch

if TYPE_CHECKING:
    from engine.memory.manager import ManagedModel


PatchEntry = tuple[float, WeightPatch, float]


def _get_tensor(module: nn.Module, key: str) -> torch.Tensor:
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    t: torch.Tensor | None = owner._parameters.get(leaf)
    if t is None:
        t = owner._buffers.get(leaf)
    if t is None:
        raise KeyError(key)
    return t


@dataclass
class _Backup:
    original: torch.Tensor
    by_reference: bool  # True: `original` is the very tensor that was in place (no copy was made)


class PatchState:
    """Which patch set is currently written into a base module, and the originals to restore. One per base
    module, shared by all its clones (and owned by the manager's handle when there is one)."""

    def __init__(self, module: nn.Module, offload_device: torch.device | None = None) -> None:
        self.module = module
        self.offload_device = offload_device or torch.device("cpu")
        self.applied_uuid: str | None = None
        self.backups: dict[str, _Backup] = {}

    @property
    def is_patched(self) -> bool:
        return bool(self.backups)

    def apply(self, patcher: ModelPatcher) -> bool:
        """Make the module carry exactly `patcher`'s patches. Returns False if they already were applied."""
        if self.applied_uuid == patcher.patches_uuid:
            return False
        self.restore()
        with torch.no_grad():
            for key, entries in patcher.patches.items():
                self._apply_key(key, entries)
        if patcher.patches:
            release_kernel_caches(self.module)  # packed copies of the weights just changed
        self.applied_uuid = patcher.patches_uuid
        return True

    def _apply_key(self, key: str, entries: list[PatchEntry]) -> None:
        param = _get_tensor(self.module, key)
        if param.is_meta:
            raise RuntimeError(f"cannot patch {key!r}: the model's weights are not loaded (meta tensors)")
        weight = param.data.to(torch.float32, copy=True)
        for strength_patch, patch, strength_model in entries:
            if strength_model != 1.0:
                weight *= strength_model
            try:
                weight = apply_patch(weight, patch, strength_patch)
            except ValueError as e:
                raise ValueError(f"patch for {key!r}: {e}") from e
        patched = weight.to(param.dtype)
        # On the offload device the original can simply be set aside; on the compute device it is copied to
        # the offload device first so that patching costs no extra device memory. A grown weight (a control
        # LoRA's wider img_in) cannot be copied into the old tensor: it replaces it.
        if param.device == self.offload_device or patched.shape != param.shape:
            self.backups[key] = _Backup(param.data, by_reference=True)
            param.data = patched
        else:
            self.backups[key] = _Backup(param.data.to(self.offload_device, copy=True), by_reference=False)
            param.copy_(patched)  # on the tensor itself (under no_grad): its version counter moves

    def restore(self) -> None:
        """Put the original tensors back (bit-identical); a no-op when nothing is applied."""
        with torch.no_grad():
            for key, backup in self.backups.items():
                param = _get_tensor(self.module, key)
                if backup.by_reference and backup.original.device == param.device:
                    param.data = backup.original
                elif backup.original.shape != param.shape:  # a grown weight, since moved to another device
                    param.data = backup.original.to(param.device)
                else:
                    param.copy_(backup.original)
        if self.backups:
            release_kernel_caches(self.module)  # packed copies of the patched weights
        self.backups.clear()
        self.applied_uuid = None


class ModelPatcher:
    """A base module plus a list of weight patches; `clone()` shares the module and the base weights."""

    def __init__(
        self,
        module: nn.Module,
        *,
        handle: ManagedModel | None = None,
        _state: PatchState | None = None,
    ) -> None:
        """`handle`: the manager's record of `module` (set by `ModelManager.patcher`); without one the
        patcher works on its own through `apply()` / `remove()`."""
        self.module = module
        self.handle = handle
        if _state is None:
            _state = handle.patch_state if handle is not None else PatchState(module)
        self._state = _state
        self.patches: dict[str, list[PatchEntry]] = {}
        self.patches_uuid = uuid.uuid4().hex
        # ModelComputeDtype: the dtype this clone computes in (None: the registered model's own); the
        # manager places the model for it (engine.memory.manager.ModelManager.load).
        self.compute_dtype: torch.dtype | None = None

    @property
    def patch_state(self) -> PatchState:
        return self._state

    def clone(self) -> ModelPatcher:
        c = ModelPatcher(self.module, handle=self.handle, _state=self._state)
        c.patches = {k: list(v) for k, v in self.patches.items()}
        c.patches_uuid = self.patches_uuid  # same patch set until one of them changes it
        c.compute_dtype = self.compute_dtype
        return c

    def patch_keys(self) -> set[str]:
        return set(self.module.state_dict(keep_vars=True).keys())

    def add_patches(
        self,
        patches: Mapping[str, WeightPatch | torch.Tensor],
        strength_patch: float = 1.0,
        strength_model: float = 1.0,
        *,
        strict: bool = False,
    ) -> list[str]:
        """Add patches by parameter key (the module's state-dict names). Returns the keys that matched;
        unknown keys are skipped (the LoRA loader reports them), or raise KeyError with `strict=True`."""
        known = self.patch_keys()
        unknown = sorted(k for k in patches if k not in known)
        if strict and unknown:
            raise KeyError(
                f"{len(unknown)} patch key(s) do not name a weight of the model, e.g. {unknown[:5]}; "
                "check that the patch file matches this model (SD1 vs SDXL...)"
            )
        added = []
        for key, value in patches.items():
            if key in known:
                self.patches.setdefault(key, []).append((strength_patch, as_patch(value), strength_model))
                added.append(key)
        if added:
            self.patches_uuid = uuid.uuid4().hex
        return added

    def apply(self) -> bool:
        """Write this clone's patches into the shared module (undoing another clone's first)."""
        return self._state.apply(self)

    def remove(self) -> None:
        """Restore the original weights of the shared module."""
        self._state.restore()

    @property
    def is_applied(self) -> bool:
        return self._state.applied_uuid == self.patches_uuid
