"""What the MODEL, CLIP and VAE socket values share: a module registered with the model manager, reached
through a `ModelPatcher` so that clones share the weights and keep their own weight patches."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Self

import torch

from engine.memory.manager import Location, ModelManager
from engine.memory.patcher import ModelPatcher
from engine.memory.weight_patches import WeightPatch


class ManagedHandle:
    """A model on a socket. `patcher` wraps the module the `manager` registered; `clone()` is cheap (the
    weights are shared, the patch list is copied); `use()` loads the module for a computation."""

    def __init__(self, patcher: ModelPatcher, *, manager: ModelManager, name: str) -> None:
        self.patcher = patcher
        self.manager = manager
        self.name = name

    @property
    def module(self) -> Any:
        return self.patcher.module

    def clone(self) -> Self:
        """A shallow copy with its own patch list; subclasses copy their other mutable per-clone state."""
        c = copy.copy(self)
        c.patcher = self.patcher.clone()
        return c

    def add_patches(
        self,
        patches: Mapping[str, WeightPatch | torch.Tensor],
        strength_patch: float = 1.0,
        strength_model: float = 1.0,
    ) -> list[str]:
        """Add weight patches (keys are the module's state-dict names) to this clone; returns the keys that
        matched (see ModelPatcher.add_patches)."""
        return self.patcher.add_patches(patches, strength_patch, strength_model)

    def use(self, extra_bytes: int = 0) -> Any:
        """`with handle.use() as module: ...` -- the module with this clone's patches applied, on its
        device, pinned there while the block runs. `extra_bytes`: activation memory to keep free."""
        return self.manager.use(self.patcher, extra_bytes=extra_bytes)

    @property
    def location(self) -> Location | None:
        """Where the weights are now (device, partly, RAM, dropped); None for an unmanaged patcher."""
        handle = self.patcher.handle
        return None if handle is None else handle.location
