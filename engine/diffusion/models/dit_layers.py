"""Small pieces shared by the diffusion transformers (MMDiT, Flux): adaLN modulation, RMS norm, patching.

These are functions, not modules, so each architecture keeps its own module tree (and with it the
parameter names of its checkpoints).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift``; x (B, N, C), shift/scale (B, C) broadcast over the tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters, eps 1e-6 (every adaLN-modulated norm in SD3 and Flux)."""
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS norm over the last axis, computed in float32 (fp16 squares overflow), scaled by ``weight``."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return normed * weight.to(x.dtype)


def pad_to_patch(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom/right to multiples of ``patch``, circularly as ComfyUI does."""
    ph = (patch - x.shape[-2] % patch) % patch
    pw = (patch - x.shape[-1] % patch) % patch
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="circular")


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)."""
    b, n, c = t.shape
    # The head size is explicit so that an empty sequence (no text tokens) reshapes too.
    return t.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)
