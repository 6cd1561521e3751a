"""SD3 / SD3.5 ControlNet (the InstantX / diffusers ``SD3ControlNetModel`` design) in plain torch.

A shallow copy of the MMDiT: patch embedding with the cropped position grid, timestep and pooled-text
embedders, a few joint blocks (none of them pre-only: every block's text stream continues), plus

- ``pos_embed_input``: a patch embedding (no position grid) of the control *latent* (the control image
  encoded by the VAE, scaled by SD3's factor without its shift), added to the image tokens;
- ``controlnet_blocks.N``: one linear per joint block, applied to the image tokens after the block.

Parameter names are the MMDiT's single-file keys (``x_embedder.proj``, ``pos_embed``, ``t_embedder``,
``y_embedder``, ``context_embedder``, ``joint_blocks.N.*``) and the diffusers names of the ControlNet-only
parts, which is the layout ComfyUI converts these files to (``comfy/controlnet.py``,
``load_controlnet_mmdit``); ``engine.diffusion.checkpoints.control_mmdit`` converts diffusers files.

Output, as ComfyUI's ``comfy/cldm/mmdit.py``: the pooled vector is replaced by zeros (ComfyUI's rule for
these ControlNets; diffusers' pipelines do the same for ``force_zeros_for_pooled_projection``), and the
residual of ControlNet block ``i`` is repeated ``main_depth // num_blocks`` times (once less for the last
block), so that entry ``j`` of ``{"output": [...]}`` is added after joint block ``j`` of an MMDiT of
``main_depth`` blocks (``MMDiT.forward``'s ``control``). ComfyUI takes the main depth as hidden / 64.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .dit_layers import pad_to_patch
from .mmdit import TIMESTEP_FEATURES, JointBlock, MLPEmbedder, MMDiTConfig, crop_position_grid
from .unet_blocks import timestep_embedding


@dataclass(frozen=True)
class MMDiTControlNetConfig:
    num_blocks: int = 6
    hidden_size: int = 1536
    num_heads: int = 24
    in_channels: int = 16
    control_channels: int = 16  # pos_embed_input's input: the control latent (17 with an inpaint mask)
    patch_size: int = 2
    pos_embed_max_size: int = 192
    adm_in_channels: int = 2048
    context_in_dim: int = 4096
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    dual_attention_layers: tuple[int, ...] = ()
    main_depth: int = 24  # blocks of the MMDiT the residuals are for

    def blocks_config(self) -> MMDiTConfig:
        """An MMDiT config whose first ``num_blocks`` joint blocks are this ControlNet's: one block more
        than the ControlNet has, so that none of them is the pre-only last block."""
        return MMDiTConfig(
            in_channels=self.in_channels,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            depth=self.num_blocks + 1,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            pos_embed_max_size=self.pos_embed_max_size,
            adm_in_channels=self.adm_in_channels,
            context_in_dim=self.context_in_dim,
            qk_norm=self.qk_norm,
            dual_attention_layers=self.dual_attention_layers,
        )

    def replace(self, **changes: Any) -> MMDiTControlNetConfig:
        return dataclasses.replace(self, **changes)


# Test size: four 64-channel heads (ComfyUI ties the main depth to hidden / 64 = 4), two blocks.
TINY = MMDiTControlNetConfig(
    num_blocks=2,
    hidden_size=256,
    num_heads=4,
    pos_embed_max_size=8,
    adm_in_channels=24,
    context_in_dim=40,
    main_depth=4,
)


class _PatchProj(nn.Module):
    """``proj``: a strided ``patch x patch`` convolution to tokens (the names of the checkpoints)."""

    def __init__(self, cin: int, dim: int, patch: int, fk: dict[str, Any]):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(cin, dim, patch, stride=patch, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_patch(x, self.patch)  # circular, as the MMDiT pads its latent
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H/p * W/p, dim)


class MMDiTControlNet(nn.Module):
    def __init__(self, config: MMDiTControlNetConfig, dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        dim, p = config.hidden_size, config.patch_size
        blocks = config.blocks_config()
        self.x_embedder = _PatchProj(config.in_channels, dim, p, fk)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_embed_max_size**2, dim, **fk))
        self.t_embedder = MLPEmbedder(TIMESTEP_FEATURES, dim, fk)
        self.y_embedder = MLPEmbedder(config.adm_in_channels, dim, fk)
        self.context_embedder = nn.Linear(config.context_in_dim, dim, **fk)
        self.joint_blocks = nn.ModuleList([JointBlock(blocks, i, fk) for i in range(config.num_blocks)])
        self.controlnet_blocks = nn.ModuleList([nn.Linear(dim, dim, **fk) for _ in range(config.num_blocks)])
        self.pos_embed_input = _PatchProj(config.control_channels, dim, p, fk)

    @property
    def dtype(self) -> torch.dtype:
        return self.context_embedder.bias.dtype

    def repeats(self) -> list[int]:
        """How many consecutive main-model blocks each ControlNet block's residual is added after."""
        n = self.config.num_blocks
        count = self.config.main_depth // n
        return [count] * (n - 1) + [count - 1]

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None,
        hint: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> dict[str, list[torch.Tensor | None]]:
        """``x``: the MMDiT's input latent (B, C, H, W); ``timesteps``: (B,) in 0..1000; ``context``: text
        tokens (B, L, context_in_dim); ``hint``: the control latent (B, control_channels, H, W); ``y`` is
        ignored (zeros are embedded, see the module doc). Returns residuals (B, N, hidden)."""
        dtype = self.dtype
        b = x.shape[0]
        p = self.config.patch_size
        h, w = -(-x.shape[-2] // p), -(-x.shape[-1] // p)
        tokens = self.x_embedder(x.to(dtype)) + crop_position_grid(
            self.pos_embed, h, w, patch=p, what="SD3 ControlNet"
        )
        tokens = tokens + self.pos_embed_input(hint.to(dtype))
        t = timesteps.reshape(-1).expand(b) if timesteps.numel() == 1 else timesteps
        c = self.t_embedder(timestep_embedding(t, TIMESTEP_FEATURES).to(dtype))  # (B, hidden)
        c = c + self.y_embedder(tokens.new_zeros(b, self.config.adm_in_channels))
        if context is None:
            ctx: torch.Tensor | None = tokens.new_zeros(b, 0, self.config.hidden_size)
        else:
            ctx = self.context_embedder(context.to(dtype))
        out: list[torch.Tensor | None] = []
        for block, proj, n in zip(self.joint_blocks, self.controlnet_blocks, self.repeats(), strict=True):
            assert ctx is not None
            ctx, tokens = block(ctx, tokens, c)
            residual = proj(tokens)
            out.extend([residual] * n)
        return {"output": out}
