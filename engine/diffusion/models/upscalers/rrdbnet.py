"""RRDBNet: the generator of ESRGAN (Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", §3.1) and Real-ESRGAN (Wang et al. 2021).

Parameter names follow the "new" BasicSR layout (``conv_first``, ``body.N.rdb1.conv1``, ``conv_body``,
``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``); ``engine.diffusion.checkpoints.upscalers``
converts the original ESRGAN layout (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ``model.1.sub.{nb}``, ``model.3``...).

Scales: 4 = two nearest-neighbour 2x upsamplings with convs (2x: one, 8x: three); Real-ESRGAN's x2 and x1
models run the x4 network on a pixel-unshuffled input (2x2 resp. 4x4 blocks folded into channels), so
``conv_first`` takes 4x / 16x the image channels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _DenseBlock(nn.Module):
    """Residual dense block: 5 convs, each seeing all previous features; output scaled by 0.2."""

    def __init__(self, nf: int, gc: int, fk: dict[str, Any]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, padding=1, **fk)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, padding=1, **fk)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, padding=1, **fk)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, padding=1, **fk)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, padding=1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x1 = act(self.conv1(x))
        x2 = act(self.conv2(torch.cat((x, x1), 1)))
        x3 = act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class _RRDB(nn.Module):
    """Residual-in-residual dense block (ESRGAN Fig. 4): three dense blocks, residual scaled by 0.2."""

    def __init__(self, nf: int, gc: int, fk: dict[str, Any]) -> None:
        super().__init__()
        self.rdb1 = _DenseBlock(nf, gc, fk)
        self.rdb2 = _DenseBlock(nf, gc, fk)
        self.rdb3 = _DenseBlock(nf, gc, fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(
        self,
        *,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        nb: int = 23,
        gc: int = 32,
        scale: int = 4,
        n_up: int | None = None,
        unshuffle: int | None = None,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        """``scale`` picks the usual layout (x1/x2: Real-ESRGAN unshuffle + two upsamplings; x4: two;
        x8: three); ``n_up``/``unshuffle`` override it (old ESRGAN x2 files: one upsampling, no unshuffle)."""
        super().__init__()
        if n_up is None or unshuffle is None:
            if scale not in (1, 2, 4, 8):
                raise ValueError(f"RRDBNet scale must be 1, 2, 4 or 8, got {scale}")
            unshuffle = {1: 4, 2: 2}.get(scale, 1)
            n_up = 3 if scale == 8 else 2
        if (2**n_up) % unshuffle:
            raise ValueError(f"RRDBNet: {n_up} upsamplings with unshuffle {unshuffle} give no integer scale")
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        self.scale = 2**n_up // unshuffle
        self.in_nc = in_nc
        self.unshuffle = unshuffle
        self.n_up = n_up
        self.conv_first = nn.Conv2d(in_nc * unshuffle**2, nf, 3, padding=1, **fk)
        self.body = nn.ModuleList([_RRDB(nf, gc, fk) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, padding=1, **fk)
        for i in range(n_up):
            self.add_module(f"conv_up{i + 1}", nn.Conv2d(nf, nf, 3, padding=1, **fk))
        self.conv_hr = nn.Conv2d(nf, nf, 3, padding=1, **fk)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, padding=1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in 0..1 -> (B, C, H*scale, W*scale)."""
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        body = feat
        for block in self.body:
            body = block(body)
        feat = feat + self.conv_body(body)
        for i in range(self.n_up):
            conv = getattr(self, f"conv_up{i + 1}")
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2.0, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
