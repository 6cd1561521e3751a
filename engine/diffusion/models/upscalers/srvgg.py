"""SRVGGNetCompact: Real-ESRGAN's compact VGG-style network (Wang et al. 2021, "Real-ESRGAN", the
``realesr-general-x4v3`` / animevideo models).

``body.0`` conv(in, nf) + PReLU, then ``num_conv`` x (conv(nf, nf) + PReLU) at indices 2, 4, ..., a last
conv to ``out_nc * scale**2`` channels, pixel shuffle, plus the nearest-upsampled input as a residual.
Parameter names: ``body.N.weight`` (convs at even N, PReLU weights at odd N).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SRVGGNetCompact(nn.Module):
    def __init__(
        self,
        *,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        num_conv: int = 16,
        scale: int = 4,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        self.scale = scale
        self.in_nc = in_nc
        layers: list[nn.Module] = [nn.Conv2d(in_nc, nf, 3, padding=1, **fk), nn.PReLU(nf, **fk)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(nf, nf, 3, padding=1, **fk), nn.PReLU(nf, **fk)]
        layers.append(nn.Conv2d(nf, out_nc * scale * scale, 3, padding=1, **fk))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.scale)
        return out + F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
