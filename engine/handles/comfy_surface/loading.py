"""A MODEL from a UNet state dict built with a pack's layer operations (ComfyUI's
``comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": ops})``).

Packs such as ComfyUI-GGUF hand over a state dict of their own tensor class (quantized bytes, with the real
shape in ``.shape``) and layer classes that dequantize in forward. The UNet is diffgraph's own, with its
torch layers replaced by the pack's classes (ops.use_operations); the weights are assigned as
they are (the pack's ``_load_from_state_dict`` keeps its tensors); the UNet computes in
``compute_dtype`` instead of the storage dtype of its weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from engine.diffusion.checkpoints import diffusers_layout as dl
from engine.diffusion.checkpoints.detect import detect_checkpoint
from engine.diffusion.checkpoints.detect_unet import unet_config_from_state_dict
from engine.diffusion.checkpoints.io import CheckpointError
from engine.diffusion.models.unet import UNetModel
from engine.handles.comfy_surface.ops import use_operations
from engine.handles.loading import make_model_handle
from engine.handles.model import ModelHandle
from engine.memory.manager import ModelManager

UNET_PREFIX = "model.diffusion_model."

log = logging.getLogger(__name__)


def load_unet_with_operations(
    sd: Mapping[str, torch.Tensor],
    operations: Any,
    *,
    manager: ModelManager,
    name: str = "unet",
    compute_dtype: torch.dtype = torch.float32,
    prediction_type: str | None = None,
) -> ModelHandle:
    """The MODEL of UNet weights ``sd`` (original layout, with or without ``model.diffusion_model.``)
    built with ``operations`` (an object with Linear / Conv2d / GroupNorm / LayerNorm classes)."""
    weights = dict(sd)
    if any(k.startswith(UNET_PREFIX) for k in weights):
        weights = dl.strip_prefix(weights, UNET_PREFIX)
    # Detection reads shapes (and ndim); a pack's quantized tensor reports its real shape in `.shape` only
    # (its data, and so its ndim, is the packed bytes): detect on shape-only stand-ins.
    shapes = {k: torch.empty(tuple(v.shape), device="meta") for k, v in weights.items()}
    try:
        spec = detect_checkpoint(
            dl.add_prefix(shapes, UNET_PREFIX), filename=name, prediction_type=prediction_type
        )
        config, family, prediction, inpaint = (
            spec.unet_config,
            str(spec.family),
            spec.prediction_type,
            spec.is_inpaint,
        )
        variant = spec.variant  # IP2P / depth / x4 upscaler: their extra inputs and schedule
    except CheckpointError as exc:
        # Not a real-sized SD family (test and toy models): the shapes alone, SD1-like without an ADM
        # input and SDXL-like with one.
        sdxl_like = "label_emb.0.0.weight" in weights
        heads = {"num_head_channels": 64} if sdxl_like else {"num_heads": 8}
        config = unet_config_from_state_dict(shapes, **heads)
        family = "sdxl" if sdxl_like else "sd1"
        prediction, inpaint, variant = prediction_type or "eps", config.in_channels == 9, ""
        log.warning("%s: %s; building the UNet from its shapes as %s", name, exc, family)
    unet = UNetModel(config, device="meta")
    use_operations(unet, operations)
    missing, unexpected = unet.load_state_dict(weights, strict=False, assign=True)
    left = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
    if left or unexpected:
        raise ValueError(
            f"{name}: the weights do not fit the UNet inferred from them (not loaded: {left[:5]}, "
            f"unexpected: {list(unexpected)[:5]})"
        )
    unet.compute_dtype = compute_dtype
    unet.requires_grad_(False)
    unet.eval()
    return make_model_handle(
        unet,
        manager=manager,
        family=family,
        prediction_type=prediction,
        inpaint=inpaint,
        name=name,
        variant=variant,
    )
