"""Pieces of ComfyUI's transformer-model modules that packs import by name (comfy.ldm.flux.math,
comfy.ldm.common_dit, comfy.ldm.lumina.model): rotary position embeddings, RMS norm, the SwiGLU
feed-forward. Written from the published formulas (RoFormer, Su et al. 2021; RMSNorm, Zhang & Sennrich
2019; SwiGLU, Shazeer 2020); diffgraph runs no Lumina model, packs only build on these."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from engine.handles.comfy_surface.attention import attention_pytorch


def rope(pos: Tensor, dim: int, theta: int) -> Tensor:
    """Rotation matrices (..., n, dim/2, 2, 2) for positions ``pos`` (..., n): angle pos * theta^(-2i/dim)."""
    if dim % 2:
        raise ValueError(f"rope dimension must be even, got {dim}")
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    angles = pos.to(torch.float64)[..., None] * (1.0 / theta**scale)
    cos, sin = torch.cos(angles), torch.sin(angles)
    out = torch.stack([cos, -sin, sin, cos], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).float()


def apply_rope1(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Rotate consecutive pairs of ``x``'s last dimension by the matrices of ``rope``."""
    pairs = x.to(freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def apply_rope(xq: Tensor, xk: Tensor, freqs_cis: Tensor) -> tuple[Tensor, Tensor]:
    return apply_rope1(xq, freqs_cis), apply_rope1(xk, freqs_cis)


def attention(
    q: Tensor, k: Tensor, v: Tensor, pe: Tensor | None, mask: Any = None, transformer_options: Any = None
) -> Tensor:
    """Attention over (B, heads, tokens, d) inputs with rotary embeddings ``pe`` applied to q and k."""
    if pe is not None:
        q, k = apply_rope1(q, pe).type_as(v), apply_rope1(k, pe).type_as(v)
    return attention_pytorch(q, k, v, q.shape[1], skip_reshape=True, mask=mask)


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    scaled = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)
    return scaled if weight is None else scaled * weight.to(x.dtype)


class FeedForward(nn.Module):
    """SwiGLU feed-forward ``w2(silu(w1 x) * w3 x)``, hidden size rounded up to ``multiple_of``."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        multiple_of: int,
        ffn_dim_multiplier: float | None,
        operation_settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        settings = operation_settings or {}
        linear = getattr(settings.get("operations"), "Linear", nn.Linear)
        fk = {"device": settings.get("device"), "dtype": settings.get("dtype")}
        if ffn_dim_multiplier is not None:
            hidden_dim = int(ffn_dim_multiplier * hidden_dim)
        hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
        self.w1 = linear(dim, hidden_dim, bias=False, **fk)
        self.w2 = linear(hidden_dim, dim, bias=False, **fk)
        self.w3 = linear(dim, hidden_dim, bias=False, **fk)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))  # type: ignore[no-any-return]
