"""ComfyUI's comfy_extras.nodes_mask: its classes (diffgraph's nodes, or stand-ins; see comfy_extras/__init__)
and `composite`, the paste that ImageCompositeMasked / LatentCompositeMasked use."""

from __future__ import annotations

import importlib as _importlib
from typing import Any

import torch

from engine.comfy_compat.classic_nodes import export_classes
from engine.plugins.loader import BUILTIN_MODULE as _BUILTIN_MODULE


def composite(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: Any = None,
    multiplier: int = 8,
    resize_source: bool = False,
) -> torch.Tensor:
    """Paste `source` (B, C, H, W) into `destination` at (x, y) in units of `multiplier` pixels, weighted by
    `mask`; like ComfyUI's, it writes into `destination` and returns it."""
    ops = _importlib.import_module(f"{_BUILTIN_MODULE}._image_ops")  # the built-in nodes' own paste
    pasted = ops.composite_masked(destination, source, x, y, mask, multiplier, resize_source)
    destination[...] = pasted.to(destination.dtype)
    return destination


export_classes(globals())
