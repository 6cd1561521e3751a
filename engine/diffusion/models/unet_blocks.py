"""Building blocks of the latent-diffusion UNet: timestep embedding, ResBlock, spatial transformer.

The module and attribute names are chosen so that parameter names equal the keys of the original
CompVis ``ldm/modules/diffusionmodules/openaimodel.py`` and ``ldm/modules/attention.py`` checkpoints
(and Stability's ``sgm`` copies of them), e.g. ``in_layers.0`` / ``in_layers.2`` / ``emb_layers.1`` /
``out_layers.0`` / ``out_layers.3`` / ``skip_connection`` in a ResBlock and ``transformer_blocks.N.attn1.to_q``
in a transformer. Indices that hold parameter-free layers (SiLU, Dropout) are kept so the numbering matches.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from engine.kernels.attention import attention as fast_attention

# GroupNorm with 32 groups everywhere, as in the LDM code (``normalization(ch)``).
NORM_GROUPS = 32


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (N,) -> (N, dim), float32.

    "Attention Is All You Need" §3.5 positional encoding with the LDM/ADM conventions: frequencies
    ``exp(-ln(max_period) * i / half)`` for ``i < half`` and the cosine half *first*, then the sine half
    (the order of ``openaimodel.timestep_embedding``; diffusers calls it ``flip_sin_to_cos=True``).
    SDXL uses the same function (256 dims) to embed image sizes and crop coordinates.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.to(torch.float32).reshape(-1, 1) * freqs.reshape(1, -1)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _make_conv(cin: int, cout: int, kernel: int, **kw: Any) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, **kw)


class ResBlock(nn.Module):
    """Residual block with timestep conditioning (DDPM / ADM, Ho et al. 2020; Dhariwal & Nichol 2021).

    ``h = conv(silu(norm(x))); h += emb_proj(silu(emb)); h = conv(silu(norm(h))); return skip(x) + h``.
    ``use_scale_shift_norm`` is False in every Stable Diffusion UNet, so the embedding is simply added.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.channels = channels
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(
            nn.GroupNorm(NORM_GROUPS, channels, **fk),
            nn.SiLU(),
            _make_conv(channels, out_channels, 3, padding=1, **fk),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels, **fk))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(NORM_GROUPS, out_channels, **fk),
            nn.SiLU(),
            nn.Dropout(0.0),
            _make_conv(out_channels, out_channels, 3, padding=1, **fk),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else _make_conv(channels, out_channels, 1, **fk)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm1, _, conv1 = self.in_layers
        norm2, _, _, conv2 = self.out_layers
        h = conv1(F.silu(norm1(x)))  # (B, C_in, H, W) -> (B, C_out, H, W)
        # emb: (B, E) -> (B, C_out, 1, 1), broadcast over H, W.
        h = h + self.emb_layers[1](F.silu(emb))[:, :, None, None]
        h = conv2(F.silu(norm2(h)))
        return self.skip_connection(x) + h  # skip: (B, C_in, H, W) -> (B, C_out, H, W)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``op``), as in the LDM UNet with ``conv_resample=True``."""

    def __init__(self, channels: int, out_channels: int, *, dtype=None, device=None):
        super().__init__()
        self.op = _make_conv(channels, out_channels, 3, stride=2, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)  # (B, C, H, W) -> (B, C_out, ceil(H/2), ceil(W/2))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (``conv``).

    ``size`` lets the caller upsample to the exact size of the skip connection it is about to be
    concatenated with, so latents whose sides are not multiples of 2**levels still work.
    """

    def __init__(self, channels: int, out_channels: int, *, dtype=None, device=None):
        super().__init__()
        self.conv = _make_conv(channels, out_channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)  # (B, C, H, W) -> (B, C_out, 2H, 2W) or (B, C_out, *size)


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention; ``to_q``/``to_k``/``to_v`` without bias, ``to_out.0`` with bias.

    Uses ``torch.nn.functional.scaled_dot_product_attention`` (softmax(QK^T / sqrt(d)) V).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        *,
        dtype=None,
        device=None,
    ):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        inner = heads * dim_head
        kv_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False, **fk)
        self.to_k = nn.Linear(kv_dim, inner, bias=False, **fk)
        self.to_v = nn.Linear(kv_dim, inner, bias=False, **fk)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim, **fk), nn.Dropout(0.0))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, value: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``value``: a separate source for the values (ComfyUI's attention patches may give one);
        by default keys and values both come from ``context`` (or ``x`` for self-attention)."""
        ctx = x if context is None else context
        q = self.to_q(x)  # x: (B, N, C) queries; ctx: (B, M, C_ctx) keys and values
        k = self.to_k(ctx)
        v = self.to_v(ctx if value is None else value)
        return self.to_out[0](multi_head_attention(q, k, v, self.heads))  # (B, N, C)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) V per head on projected tokens: q (B, N, heads*d), k and v (B, M, heads*d)
    -> (B, N, heads*d). Also what ComfyUI-style attention replacements compute (optimized_attention)."""
    b, n, inner = q.shape
    d = inner // heads
    # (B, N or M, heads*d) -> (B, heads, N or M, d)
    qh = q.reshape(b, n, heads, d).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    vh = v.reshape(b, v.shape[1], heads, d).transpose(1, 2)
    out = fast_attention(qh, kh, vh)  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(b, n, inner)


class GEGLU(nn.Module):
    """Gated GELU feed-forward input projection (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim_in: int, dim_out: int, *, dtype=None, device=None):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, C) -> 2 x (B, N, C_out)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0`` = GEGLU(dim, 4*dim), ``net.1`` = Dropout, ``net.2`` = Linear(4*dim, dim)."""

    def __init__(self, dim: int, mult: int = 4, *, dtype=None, device=None):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(
            GEGLU(dim, inner, dtype=dtype, device=device),
            nn.Dropout(0.0),
            nn.Linear(inner, dim, dtype=dtype, device=device),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention on the text context, GEGLU MLP."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None,
        *,
        disable_self_attn: bool = False,
        dtype=None,
        device=None,
    ):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        # disable_self_attn (the SD x4 upscaler's upper levels): attn1 attends to the text context too.
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, heads, dim_head, context_dim if disable_self_attn else None, **fk)
        self.ff = FeedForward(dim, **fk)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim, **fk)
        self.norm1 = nn.LayerNorm(dim, **fk)
        self.norm2 = nn.LayerNorm(dim, **fk)
        self.norm3 = nn.LayerNorm(dim, **fk)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        # x: (B, N, C) image tokens; context: (B, M, C_ctx) text tokens; the shape of x never changes.
        if transformer_options and (
            "patches" in transformer_options or "patches_replace" in transformer_options
        ):
            return self._forward_patched(x, context, transformer_options)
        x = self.attn1(self.norm1(x), context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x

    def _forward_patched(
        self, x: torch.Tensor, context: torch.Tensor | None, options: dict[str, Any]
    ) -> torch.Tensor:
        """The forward with ComfyUI's attention patch points (the order of its BasicTransformerBlock):
        "attn1_patch"/"attn2_patch" functions ``(q_in, context, value, extra) -> (q_in, context, value)``
        change the attention inputs; a "patches_replace" "attn1"/"attn2" function keyed
        ``(block_name, block_number, depth_index)`` or ``(block_name, block_number)`` replaces the attention
        itself, ``(q, k, v, extra) -> out`` on projected tokens; "attn1_output_patch"/"attn2_output_patch"
        ``(out, extra) -> out`` follow it, "middle_patch" ``(x, extra) -> x`` runs between the two."""
        patches: dict[str, Any] = options.get("patches") or {}
        replace: dict[str, Any] = options.get("patches_replace") or {}
        extra = {k: v for k, v in options.items() if k not in ("patches", "patches_replace")}
        extra["n_heads"] = self.attn1.heads
        extra["dim_head"] = self.attn1.dim_head
        extra["attn_precision"] = None
        block = options.get("block")
        keys = (None if block is None else (block[0], block[1], options.get("block_index", 0)), block)

        n = self.norm1(x)
        ctx1 = context if self.disable_self_attn else None
        val1 = None
        if "attn1_patch" in patches:
            ctx1 = n if ctx1 is None else ctx1
            val1 = ctx1
            for p in patches["attn1_patch"]:
                n, ctx1, val1 = p(n, ctx1, val1, extra)
        n = _attend(self.attn1, n, ctx1, val1, replace.get("attn1"), keys, extra)
        for p in patches.get("attn1_output_patch", ()):
            n = p(n, extra)
        x = n + x
        for p in patches.get("middle_patch", ()):
            x = p(x, extra)

        n = self.norm2(x)
        ctx2, val2 = context, None
        if "attn2_patch" in patches:
            val2 = ctx2
            for p in patches["attn2_patch"]:
                n, ctx2, val2 = p(n, ctx2, val2, extra)
        n = _attend(self.attn2, n, ctx2, val2, replace.get("attn2"), keys, extra)
        for p in patches.get("attn2_output_patch", ()):
            n = p(n, extra)
        x = n + x
        return self.ff(self.norm3(x)) + x


def _attend(
    attn: CrossAttention,
    n: torch.Tensor,
    context: torch.Tensor | None,
    value: torch.Tensor | None,
    table: dict[Any, Any] | None,
    keys: tuple[Any, Any],
    extra: dict[str, Any],
) -> torch.Tensor:
    """``attn`` on ``n``, or the replacement registered for this block (the 3-part key first)."""
    fn = None
    if table:
        for key in keys:
            if key is not None and key in table:
                fn = table[key]
                break
    if fn is None:
        return attn(n, context, value)
    context = n if context is None else context
    value = context if value is None else value
    out = fn(attn.to_q(n), attn.to_k(context), attn.to_v(value), extra)
    return attn.to_out(out)


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map (Rombach et al. 2022, LDM §3.3).

    ``norm`` (GroupNorm, eps 1e-6) -> ``proj_in`` -> ``depth`` transformer blocks -> ``proj_out`` -> + input.
    SD1 uses 1x1 convolutions for ``proj_in``/``proj_out`` (4-D weights); SD2 and SDXL use linear
    layers applied on the flattened tokens (``use_linear_in_transformer``, 2-D weights).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        context_dim: int | None,
        *,
        use_linear: bool,
        disable_self_attn: bool = False,
        dtype=None,
        device=None,
    ):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, **fk)
        self.proj_in: nn.Module
        self.proj_out: nn.Module
        if use_linear:
            self.proj_in = nn.Linear(channels, inner, **fk)
        else:
            self.proj_in = _make_conv(channels, inner, 1, **fk)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner, heads, dim_head, context_dim, disable_self_attn=disable_self_attn, **fk
                )
                for _ in range(depth)
            ]
        )
        if use_linear:
            self.proj_out = nn.Linear(inner, channels, **fk)
        else:
            self.proj_out = _make_conv(inner, channels, 1, **fk)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        if transformer_options is not None:
            transformer_options["activations_shape"] = list(x.shape)
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        # (B, C, H, W) -> (B, H*W, C) token sequence.
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            if transformer_options is not None:
                transformer_options["block_index"] = i
            x = block(x, context, transformer_options)
        if self.use_linear:
            x = self.proj_out(x)
        # (B, H*W, C) -> (B, C, H, W), contiguous: a channels-last view here would make the following
        # convolutions run channels-last and re-layout their weights on every call (slow on CPU).
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class TimestepBlock(nn.ModuleList):
    """One entry of ``input_blocks`` / ``middle_block`` / ``output_blocks``: layers applied in order.

    Each layer gets what it needs: ResBlocks the timestep embedding, transformers the context,
    Upsample the size of the skip connection it will be concatenated with.
    """

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        upsample_size: tuple[int, int] | None = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """``transformer_options`` (the UNet's per-call options) reach the transformers; its
        "transformer_index" counts the transformers run so far in this UNet call (ComfyUI's key)."""
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, transformer_options)
                if transformer_options is not None and "transformer_index" in transformer_options:
                    transformer_options["transformer_index"] += 1
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x
