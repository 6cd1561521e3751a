"""FLUX.1 configs read from a transformer's keys and tensor shapes.

Keys are the original names without ``model.diffusion_model.`` (``double_blocks.N...``). What each shape
says (facts as in ComfyUI's ``comfy/model_detection.py``, which hard-codes the released sizes; here they
are read so that test-size files load too):

- ``img_in.weight`` (hidden, in_channels * 4): hidden size, input channels (16; 96 for Fill: latent 16 +
  masked image 16 + mask 64); ``final_layer.linear.weight`` (4 * out_channels, hidden);
- ``double_blocks.0.img_attn.norm.key_norm.scale`` (head_dim,): the head size, so heads = hidden / it;
- ``double_blocks.N`` / ``single_blocks.N``: the two depths; ``vector_in`` / ``txt_in``: pooled and T5 widths;
- ``guidance_in.*`` present: guidance-distilled (dev); absent: schnell.

The RoPE split of a head over the (t, h, w) ids is not stored: released models use (16, 56, 56) for their
128-channel heads; smaller heads keep that 7/16 share per spatial axis, rounded down to an even size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from engine.diffusion.models.flux import FluxConfig

from .spec import require_key

FLUX_MARKER = "double_blocks.0.img_attn.norm.key_norm.scale"
_DOUBLE = re.compile(r"^double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_blocks\.(\d+)\.")
PATCH = 2


def is_flux(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for a bare Flux state dict (keys without the ``model.diffusion_model.`` prefix)."""
    return FLUX_MARKER in sd and "img_in.weight" in sd


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE channels per id axis (t, h, w): (16, 56, 56) for 128-channel heads."""
    spatial = 2 * (head_dim * 7 // 32)
    return (head_dim - 2 * spatial, spatial, spatial)


def flux_variant(config: FluxConfig) -> str:
    if config.in_channels != config.out_channels:
        return "flux_fill" if config.in_channels == 6 * config.out_channels else "flux_variant"
    return "flux_dev" if config.guidance_embed else "flux_schnell"


def flux_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> FluxConfig:
    """Infer a `FluxConfig` from weights; raises ValueError naming the missing key."""

    def need(key: str) -> torch.Tensor:
        return require_key(sd, key, "a Flux", "Strip the 'model.diffusion_model.' prefix first.")

    img_in = need("img_in.weight")  # (hidden, in_channels * p * p)
    hidden = int(img_in.shape[0])
    head_dim = int(need(FLUX_MARKER).shape[0])
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _DOUBLE.match(k))), default=-1)
    single = 1 + max((int(m.group(1)) for k in sd if (m := _SINGLE.match(k))), default=-1)
    mlp = need("double_blocks.0.img_mlp.0.weight")
    return FluxConfig(
        in_channels=int(img_in.shape[1]) // (PATCH * PATCH),
        out_channels=int(need("final_layer.linear.weight").shape[0]) // (PATCH * PATCH),
        patch_size=PATCH,
        vec_in_dim=int(need("vector_in.in_layer.weight").shape[1]),
        context_in_dim=int(need("txt_in.weight").shape[1]),
        hidden_size=hidden,
        mlp_ratio=float(mlp.shape[0]) / hidden,
        num_heads=hidden // head_dim,
        depth=depth,
        depth_single_blocks=single,
        axes_dim=rope_axes(head_dim),
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in sd,
        guidance_embed="guidance_in.in_layer.weight" in sd,
    )
