"""The T5 v1.1 encoder (T5-XXL for SD3 and Flux), in plain torch.

Architecture: "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"
(Raffel et al. 2020) with the v1.1 changes: gated-GELU feed-forward (``wi_0`` gate through tanh-GELU times
``wi_1``), no bias anywhere, RMS layer norms without mean subtraction, attention logits *not* scaled by
1/sqrt(d) (the scale is folded into the weights), and a learned relative-position bias (bucketed
key-minus-query distances) owned by the first layer and shared by all layers.

Parameter names are the keys of the single-file text encoders (``t5xxl_fp16.safetensors``) and of
transformers' ``T5EncoderModel`` state dict: ``shared``, ``encoder.block.N.layer.0.SelfAttention.{q,k,v,o}``,
``encoder.block.0.layer.0.SelfAttention.relative_attention_bias``, ``encoder.block.N.layer.0.layer_norm``,
``encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}``, ``encoder.block.N.layer.1.layer_norm``,
``encoder.final_layer_norm``. A duplicate ``encoder.embed_tokens.weight`` (tied to ``shared``) is accepted.

fp16: activations of T5-XXL exceed the fp16 range in a few channels; like transformers, the residual
stream is clamped to the finite range after every sub-layer, and norms/softmax run in float32.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    def replace(self, **changes: Any) -> T5Config:
        return dataclasses.replace(self, **changes)


# google/t5-v1_1-xxl encoder: 24 layers of 4096 channels, 64 heads of 64, 10240-wide gated FF.
T5_XXL = T5Config()
TINY = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)


def relative_position_bucket(
    relative_position: torch.Tensor, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bidirectional T5 buckets for (key - query) distances (long tensor of any shape).

    Half the buckets are for positive distances; within each half, distances below ``num_buckets/4``
    get a bucket each and larger ones share logarithmically spaced buckets up to ``max_distance``.
    """
    half = num_buckets // 2
    buckets = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    # clamp(min=1) only keeps log() finite for the small distances, which take the exact branch anyway.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class T5LayerNorm(nn.Module):
    """RMS norm (no mean subtraction, no bias), computed in float32, result in the weight's dtype."""

    def __init__(self, dim: int, eps: float, fk: dict[str, Any]):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, **fk))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(self.weight.dtype)


class T5Attention(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool, fk: dict[str, Any]):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.cfg = cfg
        self.q = nn.Linear(cfg.d_model, inner, bias=False, **fk)
        self.k = nn.Linear(cfg.d_model, inner, bias=False, **fk)
        self.v = nn.Linear(cfg.d_model, inner, bias=False, **fk)
        self.o = nn.Linear(inner, cfg.d_model, bias=False, **fk)
        self.relative_attention_bias = (
            nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads, **fk) if has_bias else None
        )

    def position_bias(self, n: int, device: Any) -> torch.Tensor:
        """Learned bias (1, heads, n, n) for every (query, key) pair, in float32."""
        assert self.relative_attention_bias is not None
        pos = torch.arange(n, device=device)
        buckets = relative_position_bucket(
            pos[None, :] - pos[:, None],
            self.cfg.relative_attention_num_buckets,
            self.cfg.relative_attention_max_distance,
        )
        return self.relative_attention_bias(buckets).float().permute(2, 0, 1)[None]

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # x: (B, N, d_model); bias: (1 or B, heads, N, N) incl. the padding mask

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, N, heads*d_kv) -> (B, heads, N, d_kv)
            return t.view(b, n, self.cfg.num_heads, self.cfg.d_kv).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)).float() + bias  # no 1/sqrt(d) in T5
        weights = scores.softmax(dim=-1).to(v.dtype)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, -1)  # (B, N, heads*d_kv)
        return self.o(out)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool, fk: dict[str, Any]):
        super().__init__()
        self.SelfAttention = T5Attention(cfg, has_bias, fk)
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, fk)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseGatedActDense(nn.Module):
    def __init__(self, cfg: T5Config, fk: dict[str, Any]):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False, **fk)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False, **fk)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)  # (B, N, d_ff)
        return self.wo(h.to(self.wo.weight.dtype))  # (B, N, d_model)


class T5LayerFF(nn.Module):
    def __init__(self, cfg: T5Config, fk: dict[str, Any]):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(cfg, fk)
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """Keep an fp16 residual stream finite (transformers' rule: back off by 1000 once an inf appeared)."""
    if x.dtype != torch.float16:
        return x
    big = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), big - 1000, big)
    return x.clamp(-limit, limit)


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool, fk: dict[str, Any]):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(cfg, has_bias, fk), T5LayerFF(cfg, fk)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = _clamp_fp16(self.layer[0](x, bias))
        return _clamp_fp16(self.layer[1](x))


class T5Stack(nn.Module):
    def __init__(self, cfg: T5Config, fk: dict[str, Any]):
        super().__init__()
        self.block = nn.ModuleList([T5Block(cfg, i == 0, fk) for i in range(cfg.num_layers)])
        self.final_layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, fk)


class T5EncoderModel(nn.Module):
    def __init__(self, config: T5Config, dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        self.shared = nn.Embedding(config.vocab_size, config.d_model, **fk)
        self.encoder = T5Stack(config, fk)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # transformers writes the tied input embedding twice; keep one copy.
        tied = state_dict.pop(f"{prefix}encoder.embed_tokens.weight", None)
        if tied is not None and f"{prefix}shared.weight" not in state_dict:
            state_dict[f"{prefix}shared.weight"] = tied
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, N) -> final hidden states (B, N, d_model) in the model's dtype.

        ``attention_mask`` (B, N), 1 for real tokens and 0 for padding, keeps keys at padding
        positions out of every attention (SD3 and Flux encode without a mask by default).
        """
        x = self.shared(input_ids)  # (B, N, d_model)
        block0 = self.encoder.block[0]
        assert isinstance(block0, T5Block)
        first = block0.layer[0]
        assert isinstance(first, T5LayerSelfAttention)
        bias = first.SelfAttention.position_bias(input_ids.shape[1], input_ids.device)  # (1, heads, N, N)
        if attention_mask is not None:
            masked = (1.0 - attention_mask.float())[:, None, None, :] * torch.finfo(torch.float32).min
            bias = bias + masked  # (B, heads, N, N)
        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)
