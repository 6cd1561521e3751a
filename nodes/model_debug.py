"""ModelComputeDtype (ComfyUI's nodes_model_advanced): a MODEL clone that computes in another dtype.

The clone's patcher carries the dtype; when it is used the model manager places the model for it (layers
whose weights are stored otherwise are cast to it per forward, and the UNet casts its inputs to it), and
places it back for the registered dtype when another clone is used (engine.memory.manager). "default"
keeps the model's own compute dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from engine import api

DTYPES: dict[str, torch.dtype | None] = {
    "default": None,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@api.node(
    "ModelComputeDtype",
    category="advanced/debug/model",
    display_name="ModelComputeDtype",
    inputs=[api.Input("model", api.MODEL), api.Combo("dtype", list(DTYPES))],
    outputs=[api.MODEL],
)
def model_compute_dtype(model: Any, dtype: str):
    """A clone computing in `dtype` (its weights stay as stored; each layer runs on a cast copy)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if DTYPES[dtype] is not None and not hasattr(model.unet, "compute_dtype"):
        raise ValueError(
            f"ModelComputeDtype: the {model.family} model does not take a compute dtype yet (SD1 / SD2 / "
            "SDXL UNets do)"
        )
    m = model.clone()
    m.patcher.compute_dtype = DTYPES[dtype]
    return (m,)


NODES = [model_compute_dtype]
