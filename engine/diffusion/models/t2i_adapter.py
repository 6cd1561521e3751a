"""T2I-Adapter (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable Ability for
Text-to-Image Diffusion Models"): a small convolutional network that turns a control image into one
feature map per UNet level, added to the UNet's encoder features (not timestep dependent, so it runs
once per image size).

Key layout of the TencentARC release (``conv_in``, ``body.N.{in_conv,block1,block2,skep,down_opt.op}``);
files saved by diffusers (``adapter.body.I.resnets.J.*``) are renamed to it by
``engine.diffusion.checkpoints.control``, which also reads the architecture from the weights. Architecture facts:
pixel-unshuffle by 8 (SD1.x/2.x) or 16 (SDXL) -> ``conv_in`` -> per level ``nums_rb`` residual blocks, the
first of each level after the first downsampling 2x (SDXL: only the third level downsamples), features
after each level. ``forward`` returns the residual lists of the UNet ``control`` contract in ComfyUI's
placement: SD1/SD2 level features go after input blocks 2, 5, 8, 11 (the last res block of each level);
SDXL's after input blocks 3, 5, 8 and the middle block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _AdapterResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, *, down: bool, ksize: int, use_conv: bool, fk: dict[str, Any]):
        super().__init__()
        pad = ksize // 2
        self.down = down
        if down and use_conv:
            self.down_opt = nn.Module()
            self.down_opt.op = nn.Conv2d(cin, cin, 3, stride=2, padding=1, **fk)
        self.in_conv = nn.Conv2d(cin, cout, ksize, padding=pad, **fk) if cin != cout else None
        self.block1 = nn.Conv2d(cout, cout, 3, padding=1, **fk)
        self.block2 = nn.Conv2d(cout, cout, ksize, padding=pad, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            down_opt = getattr(self, "down_opt", None)
            # `op` keeps the original checkpoint key `down_opt.op.weight`
            x = down_opt.get_submodule("op")(x) if isinstance(down_opt, nn.Module) else F.avg_pool2d(x, 2, 2)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class T2IAdapter(nn.Module):
    """The full T2I-Adapter (``sk=True`` residual blocks, as in all released full adapters)."""

    def __init__(
        self,
        cin: int,
        channels: tuple[int, ...],
        *,
        nums_rb: int = 2,
        ksize: int = 1,
        use_conv: bool = False,
        xl: bool = False,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        self.xl = xl
        self.unshuffle = 16 if xl else 8
        self.channels = tuple(channels)
        self.nums_rb = nums_rb
        self.conv_in = nn.Conv2d(cin, channels[0], 3, padding=1, **fk)
        body = []
        for i, ch in enumerate(channels):
            for j in range(nums_rb):
                first = j == 0 and i != 0
                down = first and (i == 2 if xl else True)
                cin_b = channels[i - 1] if first else ch
                body.append(_AdapterResBlock(cin_b, ch, down=down, ksize=ksize, use_conv=use_conv, fk=fk))
        self.body = nn.ModuleList(body)

    @property
    def input_channels(self) -> int:
        return int(self.conv_in.weight.shape[1]) // (self.unshuffle**2)

    def features(self, hint: torch.Tensor) -> list[torch.Tensor]:
        x = F.pixel_unshuffle(hint, self.unshuffle)
        x = self.conv_in(x)
        feats = []
        for i in range(len(self.channels)):
            for j in range(self.nums_rb):
                x = self.body[i * self.nums_rb + j](x)
            feats.append(x)
        return feats

    def forward(self, hint: torch.Tensor) -> dict[str, list[torch.Tensor | None]]:
        """``hint``: (B, C, H, W) in 0..1, H and W multiples of 64 (SD) / 128 (SDXL) pixels."""
        if hint.shape[1] != self.input_channels:
            if self.input_channels == 1:
                hint = hint[:, :1]
            else:
                raise ValueError(
                    f"this T2I-Adapter takes {self.input_channels}-channel images, got {hint.shape[1]}"
                )
        feats = self.features(hint.to(self.conv_in.weight.dtype))
        slots: list[torch.Tensor | None] = []
        for i, f in enumerate(feats):
            if self.xl:
                pad = 3 if i == 0 else (2 if i == 2 else 1)
            else:
                pad = 2
            slots += [None] * pad + [f]
        if self.xl:
            # Last level -> middle block; the rest in input-block order, reversed for the UNet's pop().
            return {"input": slots[:-1][::-1], "middle": [slots[-1]]}
        return {"input": slots[::-1]}
