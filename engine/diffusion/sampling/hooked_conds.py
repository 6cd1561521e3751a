"""What the guided denoiser needs for ComfyUI's hooks conditioning keys ("hooks", "default").

A HOOKS group (engine.handles.hooks.HookGroup) is duck-typed here: the diffusion layer only calls
``group.start_sampling(base_model)`` once per run and ``session.apply(group_or_None, sigma, sample_sigmas)``
before each model call, so the weight patches follow the conditioning being evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .diffusion_model import _to_batch


def hook_session(base_model: Any, conds: Sequence[Any]) -> Any:
    """The run's hook session when an entry has hooks (None otherwise): started by the first group."""
    for c in conds:
        hooks = getattr(c, "hooks", None)
        if hooks is not None:
            return hooks.start_sampling(base_model)
    return None


def default_weight(x: torch.Tensor, conds: Sequence[Any]) -> torch.Tensor | None:
    """ComfyUI's finalize_default_conds: 1 minus the weights (mult over area) of the side's other active
    entries, floored at 0, shaped like `x`; None when nothing is left for a default entry to cover."""
    weight = torch.ones_like(x)
    for c in conds:
        mult = c.mult
        if isinstance(mult, torch.Tensor) and mult.shape[0] not in (1, x.shape[0]):
            mult = _to_batch(mult, x.shape[0])
        if c.area is None:
            weight -= mult
        else:
            ah, aw, ay, ax = c.area
            weight[:, :, ay : ay + ah, ax : ax + aw] -= mult
    weight.clamp_(min=0.0)
    return weight if float(weight.max()) > 0.0 else None
