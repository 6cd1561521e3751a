"""Stability AI's own SD3.5 ControlNets (``sd3.5_large_controlnet_{blur,canny,depth}.safetensors``) in plain torch.

A different design from the InstantX / diffusers one of ``mmdit_controlnet`` (facts from ComfyUI's
``comfy/cldm/dit_embedder.py`` and ``load_controlnet_sd35`` in ``comfy/controlnet.py``; the file's key names
from diffusers' ``scripts/convert_sd3_controlnet_to_diffusers.py``):

- ``transformer_blocks.N`` are single-stream DiT blocks: self-attention over the image tokens only (6-chunk
  adaLN modulation, qkv with bias, no QK norm, 64-channel heads); the text tokens are not used at all;
- the file has no patch embedding: ``x_embedder`` is the main MMDiT's, copied in before sampling
  (``borrow_embedder``), and the position term is a fixed sin-cos grid (``sincos_grid``), not the
  MMDiT's learned one;
- ``t_embedder`` / ``y_embedder`` embed the timestep and the real pooled text vector (the InstantX design
  embeds zeros instead);
- ``pos_embed_input``: the patch embedding of the control latent, added to the image tokens;
- ``controlnet_blocks.N``: one linear per block on that block's output; each residual is repeated
  ``ceil(main_depth / N)`` times so that entry ``j`` of ``{"output": [...]}`` is added after joint block ``j``
  of the main MMDiT (``MMDiT.forward``'s ``control``). The main depth is hidden / 64 (38 for SD3.5 large:
  19 blocks, each residual used twice), as ComfyUI takes it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from engine.kernels.attention import attention as fast_attention

from .dit_layers import merge_heads
from .mmdit import TIMESTEP_FEATURES, DismantledBlock, MLPEmbedder, MMDiTConfig
from .mmdit_controlnet import _PatchProj  # circular padding, as the MMDiT pads its latent
from .unet_blocks import timestep_embedding

HEAD_CHANNELS = 64
# The sin-cos grid spans [centre - 7.5, centre + 7.5] along its shorter side (Stability's reference values).
GRID_CENTRE = 7.5
GRID_HALF_SPAN = 7.5


@dataclass(frozen=True)
class SD35ControlNetConfig:
    num_blocks: int = 19
    hidden_size: int = 2432
    in_channels: int = 16
    patch_size: int = 2
    adm_in_channels: int = 2048
    mlp_ratio: float = 4.0

    @property
    def num_heads(self) -> int:
        return max(1, self.hidden_size // HEAD_CHANNELS)

    @property
    def main_depth(self) -> int:
        """Joint blocks of the MMDiT the residuals are for (ComfyUI: hidden / 64)."""
        return max(1, self.hidden_size // HEAD_CHANNELS)

    def block_config(self) -> MMDiTConfig:
        return MMDiTConfig(
            in_channels=self.in_channels,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            depth=self.num_blocks,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            adm_in_channels=self.adm_in_channels,
        )

    def replace(self, **changes: Any) -> SD35ControlNetConfig:
        return dataclasses.replace(self, **changes)


# Test size: two 64-channel heads (main depth 2), two blocks, a 24-wide pooled vector (mmdit.TINY's).
TINY = SD35ControlNetConfig(num_blocks=2, hidden_size=128, adm_in_channels=24)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): sines of ``pos * 10000^(-i / (dim/2))`` then the cosines."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_grid(dim: int, h: int, w: int) -> torch.Tensor:
    """The fixed 2-D position embedding of an ``h x w`` token grid, (1, h*w, dim), row-major tokens: the
    first half of the channels encodes the column, the second half the row (Stability's order)."""
    small = min(h, w)
    span_h, span_w = h / small * GRID_HALF_SPAN, w / small * GRID_HALF_SPAN
    rows = torch.linspace(GRID_CENTRE - span_h, GRID_CENTRE + span_h, h, dtype=torch.float64)
    cols = torch.linspace(GRID_CENTRE - span_w, GRID_CENTRE + span_w, w, dtype=torch.float64)
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, grid_c), _sincos_1d(dim // 2, grid_r)], dim=1)
    return emb.float().unsqueeze(0)


class SingleStreamBlock(DismantledBlock):
    """A DiT block over the image tokens alone: the MMDiT's image-stream block with its own attention."""

    def __init__(self, cfg: MMDiTConfig, fk: dict[str, Any]):
        super().__init__(cfg, pre_only=False, dual=False, fk=fk)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mod = self.modulation(c)
        (q, k, v), _ = self.pre_attention(x, mod)
        attn = merge_heads(fast_attention(q, k, v))  # (B, N, dim)
        return self.add_mlp(self.add_attention(x, attn, None, mod), mod)


class SD35ControlNet(nn.Module):
    # Parameters that come from the main model (``borrow_embedder``), not from the file.
    BORROWED = ("x_embedder.proj.weight", "x_embedder.proj.bias")

    def __init__(self, config: SD35ControlNetConfig, dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        dim, p = config.hidden_size, config.patch_size
        blocks = config.block_config()
        self.x_embedder = _PatchProj(config.in_channels, dim, p, fk)
        self.t_embedder = MLPEmbedder(TIMESTEP_FEATURES, dim, fk)
        self.y_embedder = MLPEmbedder(config.adm_in_channels, dim, fk)
        self.transformer_blocks = nn.ModuleList(
            [SingleStreamBlock(blocks, fk) for _ in range(config.num_blocks)]
        )
        self.controlnet_blocks = nn.ModuleList([nn.Linear(dim, dim, **fk) for _ in range(config.num_blocks)])
        self.pos_embed_input = _PatchProj(config.in_channels, dim, p, fk)
        self.borrowed = False  # whether x_embedder holds a main model's weights
        self.control_type: str | None = None  # "blur" / "canny" / "depth": how the hint is preprocessed

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed_input.proj.weight.dtype

    def file_keys(self) -> set[str]:
        """The parameter names a file must provide: everything but the borrowed embedder."""
        return {k for k in self.state_dict() if k not in self.BORROWED}

    def borrow_embedder(self, main: Any) -> None:
        """Copy the main MMDiT's patch embedding (``x_embedder.proj``) into this ControlNet, as ComfyUI does
        before every sampling run; ValueError when the two do not fit (another model size)."""
        src = main.x_embedder.proj
        dst = self.x_embedder.proj
        if tuple(src.weight.shape) != tuple(dst.weight.shape):
            raise ValueError(
                f"this SD3.5 ControlNet is for a model with a {tuple(dst.weight.shape)} patch embedding, the "
                f"sampled model has {tuple(src.weight.shape)} (use it with SD3.5 large)"
            )
        assert src.bias is not None and dst.bias is not None
        with torch.no_grad():
            dst.weight.data = src.weight.detach().to(dst.weight.device, self.dtype).clone()
            dst.bias.data = src.bias.detach().to(dst.bias.device, self.dtype).clone()
        self.borrowed = True

    def repeats(self) -> int:
        return math.ceil(self.config.main_depth / self.config.num_blocks)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None, hint: torch.Tensor
    ) -> dict[str, list[torch.Tensor | None]]:
        """``x``: the MMDiT's input latent (B, C, H, W); ``timesteps``: (B,) in 0..1000; ``y``: the pooled
        text vector (B, adm_in_channels) or None; ``hint``: the control latent (B, C, H, W). Returns the
        residuals (B, N, hidden) per main-model block."""
        if not self.borrowed:
            raise RuntimeError(
                "this SD3.5 ControlNet has no patch embedding of its own: it takes the sampled model's "
                "(borrow_embedder) before it runs"
            )
        dtype = self.dtype
        b = x.shape[0]
        p = self.config.patch_size
        h, w = -(-x.shape[-2] // p), -(-x.shape[-1] // p)
        grid = sincos_grid(self.config.hidden_size, h, w).to(x.device, dtype)
        tokens = self.x_embedder(x.to(dtype)) + grid
        t = timesteps.reshape(-1).expand(b) if timesteps.numel() == 1 else timesteps
        c = self.t_embedder(timestep_embedding(t, TIMESTEP_FEATURES).to(dtype))  # (B, hidden)
        if y is not None:
            c = c + self.y_embedder(y.to(dtype))
        tokens = tokens + self.pos_embed_input(hint.to(dtype))
        out: list[torch.Tensor | None] = []
        for block, proj in zip(self.transformer_blocks, self.controlnet_blocks, strict=True):
            tokens = block(tokens, c)
            out.extend([proj(tokens)] * self.repeats())
        return {"output": out}
