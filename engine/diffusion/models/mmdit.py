"""MMDiT, the diffusion transformer of Stable Diffusion 3 / 3.5, in plain torch.

Architecture: "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (Esser et al. 2024):
image patches and text tokens keep separate weights (``x_block`` / ``context_block``) but attend jointly,
every block is adaLN-modulated by ``timestep embedding + pooled text embedding``. SD3.5 adds RMS norm on
queries and keys (``attn.ln_q`` / ``attn.ln_k``); SD3.5 medium ("MMDiT-X") adds a second, image-only
self-attention (``x_block.attn2``) in its first 13 blocks.

Parameter names are the keys of the original single-file checkpoints without ``model.diffusion_model.``:
``x_embedder.proj``, ``pos_embed``, ``t_embedder.mlp.0/2``, ``y_embedder.mlp.0/2``, ``context_embedder``,
``joint_blocks.N.{context_block,x_block}.{attn.qkv, attn.proj, attn.ln_q, attn.ln_k, attn2.*,
adaLN_modulation.1, mlp.fc1, mlp.fc2}``, ``final_layer.{adaLN_modulation.1, linear}``. The last block's
``context_block`` is "pre-only": its text output is never used, so it has no ``attn.proj``/``mlp`` and its
modulation has 2 chunks (shift, scale).

Forward contract: ``MMDiT.forward(x, timesteps, context=None, y=None, control=None)``

- ``x``: latents (B, in_channels, H, W) (any H, W: padded circularly to the patch size, output cropped);
  ``timesteps``: (B,) in the 0..1000 training scale (``sigma * 1000``);
  ``context``: text tokens (B, L, context_in_dim) or None; ``y``: pooled text (B, adm_in_channels) or None.
- ``control``: ComfyUI's ControlNet residuals, ``{"output": [tensor | None, ...]}``; entry ``i`` (image
  tokens, (B, N, hidden)) is added to the image stream after joint block ``i``.
- Inputs are cast to the model's dtype; the output has ``x``'s dtype and shape (B, out_channels, H, W).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from engine.kernels.attention import attention as fast_attention

from .dit_layers import layer_norm, merge_heads, modulate, pad_to_patch, rms_norm, split_heads
from .unet_blocks import timestep_embedding

# Size of the sinusoidal timestep features fed to ``t_embedder`` (DiT's frequency_embedding_size).
TIMESTEP_FEATURES = 256


@dataclass(frozen=True)
class MMDiTConfig:
    """Shape of an MMDiT. Heads are ``hidden_size / head_dim``; SD3 uses 64-channel heads throughout."""

    in_channels: int = 16
    out_channels: int = 16
    patch_size: int = 2
    hidden_size: int = 1536
    depth: int = 24
    num_heads: int = 24
    mlp_ratio: float = 4.0
    pos_embed_max_size: int = 192
    adm_in_channels: int = 2048
    context_in_dim: int = 4096
    qk_norm: bool = False
    # Indices of the blocks with the extra image self-attention (MMDiT-X).
    dual_attention_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"MMDiTConfig: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}"
            )
        if any(not 0 <= i < self.depth for i in self.dual_attention_layers):
            raise ValueError(
                f"MMDiTConfig: dual_attention_layers {self.dual_attention_layers} outside 0..{self.depth - 1}"
            )

    def replace(self, **changes: Any) -> MMDiTConfig:
        return dataclasses.replace(self, **changes)


# sd3_medium.safetensors: 24 blocks of 1536 channels, 192x192 position grid.
SD3_MEDIUM = MMDiTConfig()
# sd3.5_large(_turbo).safetensors: 38 blocks of 2432 channels, QK RMS norm.
SD35_LARGE = MMDiTConfig(hidden_size=2432, depth=38, num_heads=38, qk_norm=True)
# sd3.5_medium.safetensors (MMDiT-X): dual attention in blocks 0..12, 384x384 position grid.
SD35_MEDIUM = MMDiTConfig(pos_embed_max_size=384, qk_norm=True, dual_attention_layers=tuple(range(13)))
# Test sizes: two 32-channel heads, an 8x8 position grid.
TINY = MMDiTConfig(
    hidden_size=64, depth=2, num_heads=2, pos_embed_max_size=8, adm_in_channels=24, context_in_dim=40
)
TINY_X = TINY.replace(depth=3, qk_norm=True, dual_attention_layers=(0, 1))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches -> tokens, by a strided convolution (``proj``)."""

    def __init__(self, cfg: MMDiTConfig, fk: dict[str, Any]):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, p, stride=p, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H/p * W/p, hidden)


class MLPEmbedder(nn.Module):
    """``mlp.0`` Linear -> SiLU -> ``mlp.2`` Linear (t_embedder, y_embedder)."""

    def __init__(self, cin: int, hidden: int, fk: dict[str, Any]):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cin, hidden, **fk), nn.SiLU(), nn.Linear(hidden, hidden, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)  # (B, cin) -> (B, hidden)


class RMSNorm(nn.Module):
    """Per-head RMS norm of queries/keys with a learned scale (``weight``), eps 1e-6 (SD3.5)."""

    def __init__(self, dim: int, fk: dict[str, Any]):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, fk: dict[str, Any]):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, **fk)
        self.fc2 = nn.Linear(hidden, dim, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # (B, N, dim) -> (B, N, dim)


class SelfAttention(nn.Module):
    """``qkv`` projection (optionally RMS-normed q/k per head) and the output ``proj`` (absent if pre-only)."""

    def __init__(self, dim: int, heads: int, *, qk_norm: bool, pre_only: bool, fk: dict[str, Any]):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, **fk)
        self.proj = None if pre_only else nn.Linear(dim, dim, **fk)
        self.ln_q = RMSNorm(dim // heads, fk) if qk_norm else None
        self.ln_k = RMSNorm(dim // heads, fk) if qk_norm else None

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, dim) -> q, k, v, each (B, heads, N, dim/heads)."""
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.ln_q is not None and self.ln_k is not None:
            q, k = self.ln_q(q), self.ln_k(k)
        return q, k, v


QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class DismantledBlock(nn.Module):
    """One stream (image or text) of a joint block: modulation, qkv, and everything after attention.

    Modulation chunks, in checkpoint order: shift/scale/gate for attention, shift/scale/gate for the MLP,
    then shift/scale/gate for ``attn2`` (MMDiT-X). A pre-only block has only shift/scale.
    """

    def __init__(self, cfg: MMDiTConfig, *, pre_only: bool, dual: bool, fk: dict[str, Any]):
        super().__init__()
        dim = cfg.hidden_size
        self.pre_only = pre_only
        self.attn = SelfAttention(dim, cfg.num_heads, qk_norm=cfg.qk_norm, pre_only=pre_only, fk=fk)
        self.attn2 = (
            SelfAttention(dim, cfg.num_heads, qk_norm=cfg.qk_norm, pre_only=False, fk=fk) if dual else None
        )
        self.mlp = None if pre_only else Mlp(dim, int(dim * cfg.mlp_ratio), fk)
        self.n_mod = 2 if pre_only else (9 if dual else 6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.n_mod * dim, **fk))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.adaLN_modulation[1](F.silu(c)).chunk(self.n_mod, dim=1)  # n_mod x (B, dim)

    def pre_attention(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> tuple[QKV, QKV | None]:
        normed = layer_norm(x)  # (B, N, dim)
        qkv = self.attn.qkv_heads(modulate(normed, mod[0], mod[1]))
        qkv2 = None
        if self.attn2 is not None:
            qkv2 = self.attn2.qkv_heads(modulate(normed, mod[6], mod[7]))
        return qkv, qkv2

    def add_attention(
        self, x: torch.Tensor, attn: torch.Tensor, attn2: torch.Tensor | None, mod: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """The gated attention output(s) added to the stream (first half of the block's tail)."""
        assert self.attn.proj is not None
        x = x + mod[2][:, None] * self.attn.proj(attn)  # attn: (B, N, dim)
        if self.attn2 is not None and attn2 is not None:
            assert self.attn2.proj is not None
            x = x + mod[8][:, None] * self.attn2.proj(attn2)
        return x

    def add_mlp(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        assert self.mlp is not None
        return x + mod[5][:, None] * self.mlp(modulate(layer_norm(x), mod[3], mod[4]))


class JointBlock(nn.Module):
    def __init__(self, cfg: MMDiTConfig, index: int, fk: dict[str, Any]):
        super().__init__()
        last = index == cfg.depth - 1
        self.context_block = DismantledBlock(cfg, pre_only=last, dual=False, fk=fk)
        self.x_block = DismantledBlock(cfg, pre_only=False, dual=index in cfg.dual_attention_layers, fk=fk)

    def forward(
        self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        # context: (B, L, dim) text tokens; x: (B, N, dim) image tokens; c: (B, dim) conditioning vector.
        n_ctx = context.shape[1]
        ctx_mod = self.context_block.modulation(c)
        x_mod = self.x_block.modulation(c)
        (cq, ck, cv), _ = self.context_block.pre_attention(context, ctx_mod)
        (xq, xk, xv), x_qkv2 = self.x_block.pre_attention(x, x_mod)
        # Joint attention over [text; image] tokens: (B, heads, L+N, d).
        joint = fast_attention(
            torch.cat((cq, xq), dim=2), torch.cat((ck, xk), dim=2), torch.cat((cv, xv), dim=2)
        )
        joint = merge_heads(joint)  # (B, L+N, dim)
        # q/k/v view the qkv projections: dropped here so those are freed before the MLPs run.
        del cq, ck, cv, xq, xk, xv
        x_attn2 = None
        if x_qkv2 is not None:
            x_attn2 = merge_heads(fast_attention(*x_qkv2))  # image-only: (B, N, dim)
            del x_qkv2
        # Both streams' attention outputs before either MLP, so the joint tensor is freed first.
        x = self.x_block.add_attention(x, joint[:, n_ctx:], x_attn2, x_mod)
        out_ctx = None
        if not self.context_block.pre_only:
            out_ctx = self.context_block.add_attention(context, joint[:, :n_ctx], None, ctx_mod)
        del joint, x_attn2
        x = self.x_block.add_mlp(x, x_mod)
        return (None if out_ctx is None else self.context_block.add_mlp(out_ctx, ctx_mod)), x


class FinalLayer(nn.Module):
    def __init__(self, cfg: MMDiTConfig, fk: dict[str, Any]):
        super().__init__()
        dim = cfg.hidden_size
        self.linear = nn.Linear(dim, cfg.patch_size**2 * cfg.out_channels, **fk)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, **fk))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation[1](F.silu(c)).chunk(2, dim=1)
        return self.linear(modulate(layer_norm(x), shift, scale))  # (B, N, dim) -> (B, N, p*p*C_out)


class MMDiT(nn.Module):
    def __init__(self, config: MMDiTConfig, dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        dim = config.hidden_size
        self.x_embedder = PatchEmbed(config, fk)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_embed_max_size**2, dim, **fk))
        self.t_embedder = MLPEmbedder(TIMESTEP_FEATURES, dim, fk)
        self.y_embedder = MLPEmbedder(config.adm_in_channels, dim, fk)
        self.context_embedder = nn.Linear(config.context_in_dim, dim, **fk)
        self.joint_blocks = nn.ModuleList([JointBlock(config, i, fk) for i in range(config.depth)])
        self.final_layer = FinalLayer(config, fk)

    @property
    def dtype(self) -> torch.dtype:
        # The bias: fp8 storage (engine.memory.dtypes.store_weights_as) converts matmul weights only.
        return self.context_embedder.bias.dtype

    def cropped_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The centre ``h x w`` window of the stored position grid, as tokens (1, h*w, hidden)."""
        return crop_position_grid(self.pos_embed, h, w, patch=self.config.patch_size, what="MMDiT")

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, h*w, p*p*C) tokens -> (B, C, h*p, w*p); each token holds its patch as (p, p, C)."""
        p, c = self.config.patch_size, self.config.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: Mapping[str, list[torch.Tensor | None]] | None = None,
        blocks_replace: Mapping[tuple[str, int], Any] | None = None,
    ) -> torch.Tensor:
        """``blocks_replace``: ComfyUI's "dit" block patches, ``{("double_block", i): fn}`` with
        ``fn({"txt", "img", "vec"}, {"original_block": f}) -> {"txt", "img"}`` run instead of joint block i
        (skip-layer guidance returns its input: the block is skipped)."""
        out_dtype = x.dtype
        b, _, height, width = x.shape
        p = self.config.patch_size
        x = pad_to_patch(x.to(self.dtype), p)
        h, w = x.shape[-2] // p, x.shape[-1] // p
        tokens = self.x_embedder(x) + self.cropped_pos_embed(h, w)  # (B, h*w, hidden)
        t = timesteps.reshape(-1).expand(b) if timesteps.numel() == 1 else timesteps
        c = self.t_embedder(timestep_embedding(t, TIMESTEP_FEATURES).to(self.dtype))  # (B, hidden)
        if y is not None:
            c = c + self.y_embedder(y.to(self.dtype))
        if context is None:
            ctx: torch.Tensor | None = tokens.new_zeros(b, 0, self.config.hidden_size)
        else:
            ctx = self.context_embedder(context.to(self.dtype))  # (B, L, hidden)
        residuals = list((control or {}).get("output") or [])
        replace = blocks_replace or {}
        for i, block in enumerate(self.joint_blocks):
            assert ctx is not None
            if ("double_block", i) in replace:
                ctx, tokens = _replaced_block(replace[("double_block", i)], block, ctx, tokens, c)
            else:
                ctx, tokens = block(ctx, tokens, c)
            if i < len(residuals) and residuals[i] is not None:
                tokens = tokens + residuals[i]
        out = self.unpatchify(self.final_layer(tokens, c), h, w)  # (B, C_out, h*p, w*p)
        return out[:, :, :height, :width].to(out_dtype)


def crop_position_grid(pos_embed: torch.Tensor, h: int, w: int, *, patch: int, what: str) -> torch.Tensor:
    """The centre ``h x w`` window of a square position grid (1, m*m, hidden), as tokens (1, h*w, hidden)."""
    m = math.isqrt(pos_embed.shape[1])
    if h > m or w > m:
        raise ValueError(
            f"{what}: latent of {h}x{w} patches exceeds the {m}x{m} position-embedding grid "
            f"(at most {m * patch} latent pixels per side)"
        )
    top, left = (m - h) // 2, (m - w) // 2
    grid = pos_embed.reshape(1, m, m, -1)[:, top : top + h, left : left + w]
    return grid.reshape(1, h * w, -1)


def _replaced_block(
    fn: Any, block: nn.Module, ctx: torch.Tensor, tokens: torch.Tensor, c: torch.Tensor
) -> tuple[Any, torch.Tensor]:
    def original(args: dict[str, Any]) -> dict[str, Any]:
        txt, img = block(args["txt"], args["img"], args["vec"])
        return {"txt": txt, "img": img}

    out = fn({"txt": ctx, "img": tokens, "vec": c}, {"original_block": original})
    return out["txt"], out["img"]
