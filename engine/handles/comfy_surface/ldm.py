"""ComfyUI's UNet building blocks (comfy.ldm.modules.attention, .diffusionmodules.openaimodel / util)
for custom packs.

Packs use these names two ways: they walk a MODEL's ``diffusion_model`` testing
``isinstance(module, SpatialTransformer)`` (or CrossAttention, BasicTransformerBlock...), and they build
their own modules with ComfyUI's constructor signatures. So each class here is diffgraph's block
(engine.diffusion.models.unet_blocks) under ComfyUI's constructor, and ``isinstance`` also holds for the
blocks of diffgraph's own UNet.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine.diffusion.models import unet, unet_blocks
from engine.handles.comfy_surface.attention import attention_pytorch


class _AlsoEngineBlocks(type(nn.Module)):  # type: ignore[misc]
    """isinstance(x, Cls) also holds for diffgraph's own block that Cls stands for (``_engine``)."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        engine_class = cls.__dict__.get("_engine")
        return engine_class is not None and isinstance(obj, engine_class)


def exists(val: Any) -> bool:
    return val is not None


def default(val: Any, d: Any) -> Any:
    return val if val is not None else d


def Normalize(in_channels: int, dtype: Any = None, device: Any = None) -> nn.GroupNorm:  # noqa: N802
    return nn.GroupNorm(32, in_channels, eps=1e-6, affine=True, dtype=dtype, device=device)


class CrossAttention(unet_blocks.CrossAttention, metaclass=_AlsoEngineBlocks):
    _engine = unet_blocks.CrossAttention

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        attn_precision: Any = None,
        dtype: Any = None,
        device: Any = None,
        operations: Any = None,
    ) -> None:
        super().__init__(query_dim, heads, dim_head, context_dim, dtype=dtype, device=device)
        self.attn_precision = attn_precision

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        transformer_options: Any = None,
    ) -> torch.Tensor:
        if mask is None:
            return super().forward(x, context, value)
        ctx = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx if value is None else value)
        return self.to_out[0](attention_pytorch(q, k, v, self.heads, mask=mask))


class GEGLU(unet_blocks.GEGLU, metaclass=_AlsoEngineBlocks):
    _engine = unet_blocks.GEGLU

    def __init__(
        self, dim_in: int, dim_out: int, dtype: Any = None, device: Any = None, operations: Any = None
    ):
        super().__init__(dim_in, dim_out, dtype=dtype, device=device)


class FeedForward(nn.Module, metaclass=_AlsoEngineBlocks):
    """``net.0`` (GEGLU, or Linear + GELU without ``glu``), ``net.1`` Dropout, ``net.2`` Linear."""

    _engine = unet_blocks.FeedForward

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: float = 4,
        glu: bool = False,
        dropout: float = 0.0,
        dtype: Any = None,
        device: Any = None,
        operations: Any = None,
    ) -> None:
        super().__init__()
        inner = int(dim * mult)
        fk = {"dtype": dtype, "device": device}
        project_in: nn.Module = (
            GEGLU(dim, inner, **fk) if glu else nn.Sequential(nn.Linear(dim, inner, **fk), nn.GELU())
        )
        self.net = nn.Sequential(
            project_in, nn.Dropout(dropout), nn.Linear(inner, default(dim_out, dim), **fk)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class BasicTransformerBlock(unet_blocks.BasicTransformerBlock, metaclass=_AlsoEngineBlocks):
    _engine = unet_blocks.BasicTransformerBlock

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        gated_ff: bool = True,
        checkpoint: bool = True,
        dtype: Any = None,
        device: Any = None,
        operations: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, n_heads, d_head, context_dim, dtype=dtype, device=device)
        self.n_heads, self.d_head = n_heads, d_head

    def forward(self, x: torch.Tensor, context: Any = None, transformer_options: Any = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, context, transformer_options or None)


class SpatialTransformer(unet_blocks.SpatialTransformer, metaclass=_AlsoEngineBlocks):
    _engine = unet_blocks.SpatialTransformer

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: Any = None,
        disable_self_attn: bool = False,
        use_linear: bool = False,
        use_checkpoint: bool = True,
        attn_precision: Any = None,
        dtype: Any = None,
        device: Any = None,
        operations: Any = None,
    ) -> None:
        if isinstance(context_dim, list):
            context_dim = context_dim[0]
        super().__init__(
            in_channels,
            n_heads,
            d_head,
            depth,
            context_dim,
            use_linear=use_linear,
            dtype=dtype,
            device=device,
        )
        self.in_channels = in_channels


class SpatialVideoTransformer(SpatialTransformer):
    pass


class TimestepBlock(nn.Module):
    """ComfyUI's marker base class of modules whose forward takes the timestep embedding."""


class TimestepEmbedSequential(unet_blocks.TimestepBlock, metaclass=_AlsoEngineBlocks):
    _engine = unet_blocks.TimestepBlock


ResBlock = unet_blocks.ResBlock
Downsample = unet_blocks.Downsample
Upsample = unet_blocks.Upsample
UNetModel = unet.UNetModel


def forward_timestep_embed(
    ts: Any,
    x: torch.Tensor,
    emb: torch.Tensor,
    context: torch.Tensor | None = None,
    transformer_options: dict[str, Any] | None = None,
    output_shape: Any = None,
    time_context: Any = None,
    num_video_frames: Any = None,
    image_only_indicator: Any = None,
) -> torch.Tensor:
    """Run one UNet block (``input_blocks[i]``...) as ComfyUI's helper of that name does."""
    size = None if output_shape is None else tuple(output_shape[-2:])
    return ts(x, emb, context, size, transformer_options)  # type: ignore[no-any-return]


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000, repeat_only: bool = False
) -> torch.Tensor:
    """Sinusoidal timestep embedding (cosines first), or the timesteps repeated with ``repeat_only``."""
    if repeat_only:
        return timesteps[:, None].expand(-1, dim)
    return unet_blocks.timestep_embedding(timesteps, dim, max_period)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> torch.Tensor:
    """Betas of the "linear" (linear in sqrt(beta), Stable Diffusion's) or "sqrt_linear" schedule."""
    if schedule == "linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64) ** 2
    if schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64) ** 0.5
    if schedule == "cosine":
        # Nichol & Dhariwal 2021, eq. 17.
        t = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep + cosine_s
        alphas = torch.cos(t / (1 + cosine_s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999)
    raise ValueError(f"unknown beta schedule {schedule!r}")
