"""GLIGEN boxes in CONDITIONING entries, turned into the UNet patch of the model calls that use them.

GLIGENTextBoxApply stores ``"gligen": ("position", gligen, [(embedding, h, w, y, x), ...])`` on the
entries (boxes in latent pixels: pixels // 8). For each model call whose entries carry one, the GLIGEN
model's grounding tokens are computed for the call's batch and latent size, and its fusers run as a
"middle_patch" of every transformer block (ComfyUI's ``samplers.get_area_and_mult``). As in ComfyUI's
``apply_empty_x_to_equal_area``, negative entries without boxes (and without an area) take the positive
side's when no negative entry has its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

GLIGEN_KEY = "gligen"


def gligen_of(opts: Mapping[str, Any]) -> tuple[Any, ...] | None:
    value = opts.get(GLIGEN_KEY)
    return tuple(value) if value is not None else None


def _model(obj: Any) -> Any:
    # The GLIGEN socket value holds the module as ``.model`` (ComfyUI's ModelPatcher shape).
    return getattr(obj, "model", obj)


def with_gligen_patch(
    transformer_options: dict[str, Any], gligen: Sequence[Any] | None, x: torch.Tensor
) -> dict[str, Any]:
    """``transformer_options`` with the GLIGEN middle patch added for the model input ``x`` (B, C, h, w).
    The GLIGEN module is moved to ``x``'s device (it is not managed by the model manager, as ControlNets
    are not)."""
    if gligen is None:
        return transformer_options
    kind, obj = gligen[0], gligen[1]
    params = gligen[2] if kind == "position" and len(gligen) > 2 else []
    model = _model(obj)
    if next(model.parameters()).device != x.device:
        model.to(x.device)
    b, _, h, w = (int(s) for s in x.shape)
    patch = model.middle_patch(model.grounding_tokens(b, h, w, params))
    patches = dict(transformer_options.get("patches") or {})
    patches["middle_patch"] = [*patches.get("middle_patch", ()), patch]
    return {**transformer_options, "patches": patches}


def share_with_uncond(positive: Sequence[Any], negative: Sequence[Any]) -> None:
    """Give the positive entries' GLIGEN boxes to negative entries without boxes (``PreparedCond``
    lists, changed in place; entries with an area take no part), unless a negative entry has its own."""

    def plain(c: Any) -> bool:
        return c.area is None

    if any(plain(c) and c.extra.get(GLIGEN_KEY) is not None for c in negative):
        return
    sources = [c.extra[GLIGEN_KEY] for c in positive if plain(c) and c.extra.get(GLIGEN_KEY) is not None]
    targets = [c for c in negative if plain(c)]
    if not targets:
        return
    for i, g in enumerate(sources):
        target = targets[i % len(targets)]
        target.extra = {**target.extra, GLIGEN_KEY: g}
