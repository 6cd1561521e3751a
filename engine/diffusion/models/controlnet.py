"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion Models").

A trainable copy of the UNet's encoder (time embedding, ``input_blocks``, ``middle_block``) whose first
block also receives an embedded control image (``input_hint_block``), and a zero-initialised 1x1
convolution after every input block (``zero_convs.N.0``) and after the middle block
(``middle_block_out.0``). Parameter names are those of the original single-file ControlNet checkpoints
(lllyasviel's ``cldm.py``, without the ``control_model.`` prefix), so those files load as they are;
``engine.diffusion.checkpoints.control`` reads the architecture from a file and converts the diffusers
``ControlNetModel`` layout.

Output (ComfyUI semantics, consumed by ``UNetModel``'s ``control`` argument): ``{"output": [one residual per
input block, in input-block order], "middle": [one residual]}``. The UNet pops "output" entries from the
end as it consumes its skip connections deepest first, so entry i is added to skip connection i.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .unet import UNetConfig, build_embeddings, build_input_blocks, build_middle_block
from .unet_blocks import timestep_embedding

# Channels of the hint encoder of every published ControlNet (cldm.py: 16, 16, 32, 32, 96, 96, 256,
# then a zero conv to model_channels); stride 2 on the 3rd, 5th and 7th conv: 8x downsampling.
HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)


class ControlNetModel(nn.Module):
    """The ControlNet encoder for a UNet of shape ``config`` (only its encoder-side fields are used)."""

    def __init__(
        self,
        config: UNetConfig,
        *,
        hint_channels: int = 3,
        hint_block_channels: tuple[int, ...] = HINT_CHANNELS,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        mc = config.model_channels
        self.time_embed, self.label_emb = build_embeddings(config, fk)
        # input_hint_block: conv (+SiLU) chain; indices 0, 2, 4, ... hold the convs.
        hint: list[nn.Module] = []
        cin = hint_channels
        for i, cout in enumerate(hint_block_channels):
            stride = 2 if i in (2, 4, 6) else 1
            hint += [nn.Conv2d(cin, cout, 3, padding=1, stride=stride, **fk), nn.SiLU()]
            cin = cout
        hint.append(nn.Conv2d(cin, mc, 3, padding=1, **fk))
        self.input_hint_block = nn.Sequential(*hint)

        # The encoder half is the UNet's own (same keys), with a zero convolution after every block.
        self.input_blocks, channels = build_input_blocks(config, fk)
        self.zero_convs = nn.ModuleList([nn.Sequential(nn.Conv2d(c, c, 1, **fk)) for c in channels])
        self.middle_block = build_middle_block(config, channels[-1], fk)
        self.middle_block_out = nn.Sequential(nn.Conv2d(channels[-1], channels[-1], 1, **fk))

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype  # type: ignore[return-value]

    @property
    def hint_channels(self) -> int:
        return int(self.input_hint_block[0].weight.shape[1])  # type: ignore[index]

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor | None,
        hint: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> dict[str, list[torch.Tensor]]:
        """``x``: the UNet's (already scaled) input latent; ``hint``: (B, C, 8h, 8w) control image in 0..1.
        Returns residuals in the UNet's dtype."""
        dtype = self.dtype
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        if self.label_emb is not None:
            if y is None:
                raise ValueError(
                    "this ControlNet is for SDXL and needs the ADM vector y (pooled text + sizes)"
                )
            emb = emb + self.label_emb(y.to(dtype))
        if context is not None:
            context = context.to(dtype)
        guided = self.input_hint_block(hint.to(dtype))  # (B, C_hint, 8h, 8w) -> (B, model_channels, h, w)
        h = x.to(dtype)
        outs: list[torch.Tensor] = []
        for i, (block, zc) in enumerate(zip(self.input_blocks, self.zero_convs, strict=True)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided
            outs.append(zc(h))  # one (B, C_i, H_i, W_i) residual per input block, as the UNet's skips
        h = self.middle_block(h, emb, context)
        return {"output": outs, "middle": [self.middle_block_out(h)]}
