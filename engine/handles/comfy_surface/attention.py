"""ComfyUI's attention functions (comfy.ldm.modules.attention) for packs' attention patches.

Attention replacements registered with ``set_model_attn1_replace`` / ``set_model_attn2_replace`` get
projected q, k, v of shape (B, tokens, heads * dim_head) and usually call ``optimized_attention(q, k, v,
heads)``. Every name ComfyUI picks between by hardware (pytorch, split, sub-quadratic, xformers, sage)
computes the same softmax(QK^T / sqrt(d)) V here, with the kernel diffgraph's UNet uses
(engine.kernels.attention: torch's scaled_dot_product_attention, or its oneDNN form on CPUs where that is
faster), so a replacement computing plain attention leaves the UNet's output unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.kernels.attention import attention as fast_attention


def attention_pytorch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    attn_precision: Any = None,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """``skip_reshape``: q, k, v are already (B, heads, tokens, d); ``skip_output_reshape``: return
    (B, heads, tokens, d) instead of (B, tokens, heads * d). ``mask``: additive or boolean, broadcast
    as (tokens_q, tokens_k), (B, tokens_q, tokens_k) or (B, heads, tokens_q, tokens_k)."""
    if skip_reshape:
        b, _, _, d = q.shape
    else:
        b, _, inner = q.shape
        d = inner // heads
        q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = fast_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(b, -1, heads * d)


def attention_basic(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **kwargs: Any
) -> torch.Tensor:
    return attention_pytorch(q, k, v, heads, **kwargs)


attention_split = attention_basic
attention_sub_quad = attention_basic
attention_xformers = attention_basic
attention_sage = attention_basic
attention_flash = attention_basic
optimized_attention = attention_basic
optimized_attention_masked = attention_basic


def optimized_attention_for_device(device: Any = None, mask: bool = False, small_input: bool = False) -> Any:
    return attention_basic


def wrap_attn(func: Any) -> Any:
    """ComfyUI's decorator for attention functions (its override hook); functions run unchanged here."""
    return func
