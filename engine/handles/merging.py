"""Model merging as weight patches: ComfyUI's ModelMerge* / CLIPMerge* arithmetic on handle clones.

A merge never copies a model. The result is a clone of the first model whose patch list gets, for each
weight both models share, one entry `(strength_patch, <the second model's weight>, strength_model)`; the
patcher then computes `W1 * strength_model + strength_patch * W2` when the clone is loaded for use
(engine.memory.patcher). The three arithmetic nodes are choices of the two strengths:

- simple / blocks (ratio r):  r * W1 + (1 - r) * W2       strengths (1 - r, r)
- add:                        W1 + W2                     strengths (1, 1)
- subtract (multiplier m):    m * (W1 - W2)               strengths (-m, m)

The second model's weight is read when the patch is applied, as that model's clone computes it (its own
base weight with its own patches, e.g. a LoRA), so merges of merges and of LoRA-patched models compose the
way ComfyUI's `get_key_patches` does. Weights whose shapes differ (models of different families) are left
unmerged and logged, as ComfyUI does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from engine.handles.base import ManagedHandle
from engine.memory.manager import ModelManager
from engine.memory.patcher import ModelPatcher, PatchEntry

log = logging.getLogger(__name__)

H = TypeVar("H", bound=ManagedHandle)

# (strength_patch, strength_model) for one weight key, or None to leave that weight alone.
Strengths = Callable[[str], tuple[float, float] | None]

# ComfyUI's CLIP merges leave these alone: the position-id buffer and CLIP's contrastive temperature.
CLIP_MERGE_SKIPPED_SUFFIXES = (".position_ids", ".logit_scale")


def _tensor(module: torch.nn.Module, key: str) -> torch.Tensor:
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    found: torch.Tensor | None = owner._parameters.get(leaf)
    if found is None:
        found = owner._buffers.get(leaf)
    if found is None:
        raise KeyError(key)
    return found


def _apply_entries(weight: torch.Tensor, entries: list[PatchEntry]) -> torch.Tensor:
    # The patcher's rule (engine.memory.patcher): W <- W * strength_model + strength_patch * delta(W).
    for strength_patch, patch, strength_model in entries:
        if strength_model != 1.0:
            weight *= strength_model
        weight += strength_patch * patch.delta(weight).reshape(weight.shape)
    return weight


def effective_weight(
    patcher: ModelPatcher, key: str, device: torch.device, manager: ModelManager | None = None
) -> torch.Tensor:
    """The weight `key` as the clone `patcher` sees it: its base weight plus its own patches, float32 on
    `device`. The base weight is the original even while another clone's patches are written into the
    shared module (the patch state keeps the originals aside)."""
    backup = patcher.patch_state.backups.get(key)
    base = backup.original if backup is not None else _tensor(patcher.module, key)
    if base.is_meta:
        # The manager released this model's weights (RAM budget); loading it re-reads them.
        if manager is None or patcher.handle is None:
            raise RuntimeError(f"cannot merge weight {key!r}: the other model's weights are not loaded")
        manager.load(patcher)
        backup = patcher.patch_state.backups.get(key)
        base = backup.original if backup is not None else _tensor(patcher.module, key)
    weight = base.detach().to(device=device, dtype=torch.float32, copy=True)
    return _apply_entries(weight, patcher.patches.get(key, []))


@dataclass(frozen=True, eq=False)
class OtherModelWeight:
    """A weight patch whose value is another model clone's weight `key` (ComfyUI's key patches of a
    merge): delta(W) = W2, so the patcher's `W * strength_model + strength_patch * W2` is the merge."""

    source: ModelPatcher
    key: str
    manager: ModelManager | None = None

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return effective_weight(self.source, self.key, weight.device, self.manager)


def _shapes(patcher: ModelPatcher) -> dict[str, tuple[torch.Size, bool]]:
    return {k: (v.shape, v.is_floating_point()) for k, v in patcher.module.state_dict(keep_vars=True).items()}


def merge(target: H, source: ManagedHandle, strengths: Strengths, *, skip: tuple[str, ...] = ()) -> H:
    """A clone of `target` with `source`'s weights merged in by `strengths` (see the module docstring).

    Keys present in both models with the same shape are merged; `skip` lists key suffixes left alone.
    """
    merged = target.clone()
    # A snapshot of the source's patch list: later changes to that handle must not reach this merge.
    snapshot = source.patcher.clone()
    ours, theirs = _shapes(merged.patcher), _shapes(snapshot)
    groups: dict[tuple[float, float], dict[str, OtherModelWeight]] = {}
    mismatched = []
    for key, (shape, floating) in theirs.items():
        if not floating or key.endswith(skip) or key not in ours:
            continue
        if ours[key][0] != shape:
            mismatched.append(key)
            continue
        pair = strengths(key)
        if pair is not None:
            groups.setdefault(pair, {})[key] = OtherModelWeight(snapshot, key, source.manager)
    if mismatched:
        log.warning(
            "merging %s into %s: %d weight(s) differ in shape and were not merged, e.g. %s",
            source.name,
            target.name,
            len(mismatched),
            mismatched[:3],
        )
    for (strength_patch, strength_model), patches in groups.items():
        merged.add_patches(patches, strength_patch, strength_model)
    return merged


def ratio_strengths(ratio: float) -> Strengths:
    """ModelMergeSimple / CLIPMergeSimple: ratio * W1 + (1 - ratio) * W2 for every weight."""
    return lambda key: (1.0 - ratio, ratio)


def add_strengths() -> Strengths:
    return lambda key: (1.0, 1.0)


def subtract_strengths(multiplier: float) -> Strengths:
    return lambda key: (-multiplier, multiplier)


def block_strengths(ratios: dict[str, float]) -> Strengths:
    """ModelMergeBlocks and the per-family block merges: the ratio of the longest key prefix among
    `ratios` that the weight's key starts with; keys matching none take the first ratio (ComfyUI's
    rule, where the first input is the default)."""
    default = next(iter(ratios.values()))
    by_length = sorted(ratios.items(), key=lambda item: len(item[0]), reverse=True)

    def strengths(key: str) -> tuple[float, float]:
        ratio = next((r for prefix, r in by_length if key.startswith(prefix)), default)
        return (1.0 - ratio, ratio)

    return strengths
