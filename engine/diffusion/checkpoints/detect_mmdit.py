"""MMDiT (SD3 / SD3.5) configs read from a transformer's keys and tensor shapes.

Keys are the original single-file names without ``model.diffusion_model.`` (``joint_blocks.N...``).
What each shape says (facts as in ComfyUI's ``comfy/model_detection.py``):

- ``x_embedder.proj.weight`` (hidden, in_channels, p, p): hidden size, latent channels, patch size;
- ``final_layer.linear.weight`` (p*p*out_channels, hidden): output channels;
- ``pos_embed`` (1, max_size**2, hidden): the position grid's side;
- ``y_embedder.mlp.0.weight`` / ``context_embedder.weight``: pooled and token widths (2048 / 4096);
- ``joint_blocks.N.*``: the depth; ``...attn.ln_q.weight`` (head_dim,): QK RMS norm (SD3.5) and so the
  head count; ``joint_blocks.N.x_block.attn2.*``: the MMDiT-X dual-attention blocks (SD3.5 medium).

Without QK norm the head count is not in any shape; the SD3 code ties it to the depth (hidden = 64 * depth,
heads = depth), which every released SD3 model follows, so that rule is used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from engine.diffusion.models.mmdit import MMDiTConfig

from .spec import require_key

MMDIT_MARKER = "joint_blocks.0.context_block.attn.qkv.weight"
_BLOCK = re.compile(r"^joint_blocks\.(\d+)\.")
_DUAL = re.compile(r"^joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$")


def is_mmdit(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for a bare MMDiT state dict (keys without the ``model.diffusion_model.`` prefix)."""
    return MMDIT_MARKER in sd


def mmdit_variant(config: MMDiTConfig) -> str:
    """A name for the release this config matches ("sd3_medium", "sd3.5_large", ...), else "mmdit"."""
    if config.dual_attention_layers:
        return "sd3.5_medium"
    if config.qk_norm:
        return "sd3.5_large" if config.hidden_size == 2432 else "sd3.5"
    return "sd3_medium" if config.hidden_size == 1536 else "sd3"


def mmdit_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> MMDiTConfig:
    """Infer an `MMDiTConfig` from weights; raises ValueError naming the missing key."""

    def need(key: str) -> torch.Tensor:
        return require_key(sd, key, "an MMDiT (SD3)", "Strip the 'model.diffusion_model.' prefix first.")

    proj = need("x_embedder.proj.weight")  # (hidden, in_channels, p, p)
    hidden, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    out_channels = int(need("final_layer.linear.weight").shape[0]) // (patch * patch)
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.match(k))), default=-1)
    if depth == 0:
        need(MMDIT_MARKER)
    grid = math.isqrt(int(need("pos_embed").shape[1]))
    ln_q = sd.get("joint_blocks.0.context_block.attn.ln_q.weight")
    if ln_q is not None:
        heads = hidden // int(ln_q.shape[0])
    else:
        heads = depth if hidden % depth == 0 else max(1, hidden // 64)
    dual = tuple(sorted(int(m.group(1)) for k in sd if (m := _DUAL.match(k))))
    fc1 = sd.get("joint_blocks.0.x_block.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0]) / hidden if fc1 is not None else 4.0
    return MMDiTConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=patch,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        pos_embed_max_size=grid,
        adm_in_channels=int(need("y_embedder.mlp.0.weight").shape[1]),
        context_in_dim=int(need("context_embedder.weight").shape[1]),
        qk_norm=ln_q is not None,
        dual_attention_layers=dual,
    )
