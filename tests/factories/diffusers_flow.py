"""diffusers' constructor arguments for models of our MMDiT / Flux configurations (parity tests, benchmarks)."""

from __future__ import annotations

from typing import Any

from engine.diffusion.models.flux import FluxConfig
from engine.diffusion.models.mmdit import MMDiTConfig


def sd3_transformer_kwargs(cfg: MMDiTConfig) -> dict[str, Any]:
    """``diffusers.SD3Transformer2DModel(**...)`` with the same shape as our MMDiT of ``cfg``."""
    return {
        "sample_size": cfg.pos_embed_max_size,
        "patch_size": cfg.patch_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "num_layers": cfg.depth,
        "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "num_attention_heads": cfg.num_heads,
        "joint_attention_dim": cfg.context_in_dim,
        "caption_projection_dim": cfg.hidden_size,
        "pooled_projection_dim": cfg.adm_in_channels,
        "pos_embed_max_size": cfg.pos_embed_max_size,
        "dual_attention_layers": cfg.dual_attention_layers,
        "qk_norm": "rms_norm" if cfg.qk_norm else None,
    }


def flux_transformer_kwargs(cfg: FluxConfig) -> dict[str, Any]:
    """``diffusers.FluxTransformer2DModel(**...)``: its 2x2 patches are packed into tokens by the pipeline
    (patch_size 1, 4x the latent channels)."""
    return {
        "patch_size": 1,
        "in_channels": cfg.in_channels * 4,
        "num_layers": cfg.depth,
        "num_single_layers": cfg.depth_single_blocks,
        "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "num_attention_heads": cfg.num_heads,
        "joint_attention_dim": cfg.context_in_dim,
        "pooled_projection_dim": cfg.vec_in_dim,
        "guidance_embeds": cfg.guidance_embed,
        "axes_dims_rope": cfg.axes_dim,
    }
