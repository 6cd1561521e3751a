"""AutoencoderKL, the first stage of latent diffusion (Rombach et al. 2022, §3.1), in plain torch.

Module names follow CompVis ``ldm/modules/diffusionmodules/model.py`` (``Encoder``/``Decoder``) and
``ldm/models/autoencoder.py`` (``quant_conv``/``post_quant_conv``) so parameter names equal the
original keys without the ``first_stage_model.`` prefix: ``encoder.down.0.block.0.norm1.weight``,
``encoder.down.0.downsample.conv.weight``, ``decoder.mid.attn_1.q.weight``, ``decoder.up.3.upsample.conv.weight``.

The mid-block attention projections (``q``, ``k``, ``v``, ``proj_out``) are 1x1 convolutions in the
original code (4-D weights); some converted checkpoints store them as linear (2-D) weights. Both load.

``encode``/``decode`` work on *raw* VAE latents, as ComfyUI's VAE does (its LATENT space); the sampler
maps them into the diffusion model's normalised space (``latent_formats``). ``VAEConfig.scaling_factor`` /
``shift_factor`` record the format the VAE was trained with (0.18215 for SD1/SD2, 0.13025 for SDXL, no
shift; SD3 and FLUX.1 also shift) but neither method applies them. Both can run in overlapping tiles,
blended with a linear feather over the whole overlap so tile borders leave no seam. The SD3/Flux VAE has 16 latent channels
and no ``quant_conv``/``post_quant_conv`` (``use_quant_conv=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from engine.kernels.attention import attention as fast_attention

NORM_GROUPS = 32


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    double_z: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    # False for the SD3 / Flux VAE: those files have no quant_conv/post_quant_conv at all.
    use_quant_conv: bool = True

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along each side (8 for every SD VAE)."""
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def sd(cls) -> VAEConfig:
        """SD 1.x / 2.x VAE (kl-f8), LDM scale factor 0.18215."""
        return cls()

    @classmethod
    def sdxl(cls) -> VAEConfig:
        """SDXL VAE: same architecture, scale factor 0.13025 (sd_xl_base.yaml)."""
        return cls(scaling_factor=0.13025)

    @classmethod
    def sd3(cls) -> VAEConfig:
        """SD3 / SD3.5 VAE: 16 latent channels, no quant convs, latents (z - 0.0609) * 1.5305."""
        return cls(
            z_channels=16, embed_dim=16, use_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609
        )

    @classmethod
    def flux(cls) -> VAEConfig:
        """FLUX.1 VAE (``ae.safetensors``): the SD3 architecture, latents (z - 0.1159) * 0.3611."""
        return cls(
            z_channels=16, embed_dim=16, use_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159
        )

    @classmethod
    def tiny(cls, *, scaling_factor: float = 0.18215) -> VAEConfig:
        """Test-size VAE: 32/64 channels, one res block per level, 2x downscale."""
        return cls(ch=32, ch_mult=(1, 2), num_res_blocks=1, scaling_factor=scaling_factor)


def _norm(ch: int, fk: dict[str, Any]) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, ch, eps=1e-6, **fk)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, fk: dict[str, Any]):
        super().__init__()
        self.norm1 = _norm(cin, fk)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, **fk)
        self.norm2 = _norm(cout, fk)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, **fk)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, **fk) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (the VAE's mid block)."""

    def __init__(self, ch: int, fk: dict[str, Any]):
        super().__init__()
        self.norm = _norm(ch, fk)
        self.q = nn.Conv2d(ch, ch, 1, **fk)
        self.k = nn.Conv2d(ch, ch, 1, **fk)
        self.v = nn.Conv2d(ch, ch, 1, **fk)
        self.proj_out = nn.Conv2d(ch, ch, 1, **fk)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Accept linear-style (out, in) weights for the 1x1 convs, as written by some converters.
        for name in ("q", "k", "v", "proj_out"):
            key = f"{prefix}{name}.weight"
            w = state_dict.get(key)
            if w is not None and w.ndim == 2:
                state_dict[key] = w[:, :, None, None]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, HW, C)
            return t.reshape(b, 1, c, h * w).transpose(2, 3)

        out = fast_attention(tokens(self.q(n)), tokens(self.k(n)), tokens(self.v(n)))
        out = out.transpose(2, 3).reshape(b, c, h, w)  # (B, 1, HW, C) -> (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with asymmetric (right/bottom) zero padding, as in the LDM VAE."""

    def __init__(self, ch: int, fk: dict[str, Any]):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, ch: int, fk: dict[str, Any]):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, H, W) -> (B, C, 2H, 2W)


class _Mid(nn.Module):
    def __init__(self, ch: int, fk: dict[str, Any]):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, fk)
        self.attn_1 = AttnBlock(ch, fk)
        self.block_2 = ResnetBlock(ch, ch, fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks) and an optional ``downsample``/``upsample``."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        resample = self._modules.get(self.resample_name)
        return resample(x) if resample is not None else x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, fk: dict[str, Any]):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, **fk)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cfg.ch * mult, fk))
                cin = cfg.ch * mult
            down = Downsample(cin, fk) if level != len(cfg.ch_mult) - 1 else None
            self.down.append(_Level(blocks, down, "downsample"))
        self.mid = _Mid(cin, fk)
        self.norm_out = _norm(cin, fk)
        zc = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(cin, zc, 3, padding=1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, 3, H, W) -> (B, ch, H, W)
        for stage in self.down:
            h = stage(h)  # each level but the last halves H and W
        h = self.mid(h)  # (B, ch*ch_mult[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # -> (B, 2*z_channels, H/f, W/f): mean, log-variance


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, fk: dict[str, Any]):
        super().__init__()
        cin = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1, **fk)
        self.mid = _Mid(cin, fk)
        stages: list[_Level] = []
        # Built deepest level first, stored by level index (``up.0`` is the full-resolution stage).
        for level in reversed(range(len(cfg.ch_mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cfg.ch * cfg.ch_mult[level], fk))
                cin = cfg.ch * cfg.ch_mult[level]
            up = Upsample(cin, fk) if level != 0 else None
            stages.insert(0, _Level(blocks, up, "upsample"))
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(cin, fk)
        self.conv_out = nn.Conv2d(cin, cfg.out_channels, 3, padding=1, **fk)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, z_channels, h, w) -> (B, ch*ch_mult[-1], h, w)
        for stage in reversed(self.up):
            h = stage(h)  # each level but the full-resolution one doubles H and W
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, ch, f*h, f*w) -> (B, 3, f*h, f*w)


def _tile_starts(size: int, tile: int, overlap: int, align: int) -> list[int]:
    """Start offsets of tiles covering ``size``; consecutive tiles overlap by at least ``overlap``."""
    if size <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _feather(length: int, ramp_in: int, ramp_out: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """1-D blend weight: rises linearly over the first ``ramp_in`` samples, falls over the last ``ramp_out``.

    Two neighbouring tiles ramp over exactly their shared overlap, so their weights sum to a constant
    there and the blend is a linear cross-fade: no step, hence no seam.
    """
    w = torch.ones(length, dtype=dtype, device=device)
    if ramp_in > 0:
        w[:ramp_in] = (torch.arange(ramp_in, dtype=dtype, device=device) + 0.5) / ramp_in
    if ramp_out > 0:
        w[length - ramp_out :] = torch.minimum(
            w[length - ramp_out :],
            (torch.arange(ramp_out, 0, -1, dtype=dtype, device=device) - 0.5) / ramp_out,
        )
    return w


def _run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    align: int,
    num: int,
    den: int,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` and blend; ``fn`` scales spatial sizes by ``num/den``."""
    h, w = x.shape[-2:]
    ys = _tile_starts(h, tile, overlap, align)
    xs = _tile_starts(w, tile, overlap, align)
    out: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    for iy, y0 in enumerate(ys):
        th = min(tile, h)
        for ix, x0 in enumerate(xs):
            tw = min(tile, w)
            res = fn(x[..., y0 : y0 + th, x0 : x0 + tw]).float()
            if out is None:
                out = torch.zeros(*res.shape[:2], h * num // den, w * num // den, device=res.device)
                weight = torch.zeros(1, 1, *out.shape[-2:], device=res.device)
            assert weight is not None

            def ramps(starts: list[int], i: int, t: int) -> tuple[int, int]:
                before = starts[i - 1] + t - starts[i] if i > 0 else 0
                after = starts[i] + t - starts[i + 1] if i + 1 < len(starts) else 0
                return before * num // den, after * num // den

            wy = _feather(res.shape[-2], *ramps(ys, iy, th), torch.float32, res.device)
            wx = _feather(res.shape[-1], *ramps(xs, ix, tw), torch.float32, res.device)
            wt = wy[:, None] * wx[None, :]
            oy, ox = y0 * num // den, x0 * num // den
            out[..., oy : oy + res.shape[-2], ox : ox + res.shape[-1]] += res * wt
            weight[..., oy : oy + res.shape[-2], ox : ox + res.shape[-1]] += wt
    assert out is not None and weight is not None
    return out / weight


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder; ``encode`` returns scaled latents, ``decode`` takes them."""

    def __init__(self, config: VAEConfig, dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        self.encoder = Encoder(config, fk)
        self.decoder = Decoder(config, fk)
        zc = 2 * config.z_channels if config.double_z else config.z_channels
        self.quant_conv: nn.Conv2d | None = None
        self.post_quant_conv: nn.Conv2d | None = None
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(zc, 2 * config.embed_dim, 1, **fk)
            self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1, **fk)

    @property
    def dtype(self) -> torch.dtype:
        # encoder.conv_in exists in every configuration (the quant convs do not).
        return self.encoder.conv_in.weight.dtype

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return h.float()

    def encode(
        self,
        images: torch.Tensor,
        *,
        tile_size: int | None = None,
        tile_overlap: int = 64,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in -1..1 -> raw latents (B, embed_dim, H/8, W/8) (no scale or shift).

        Returns the posterior mean; with ``generator`` a sample of the diagonal Gaussian posterior
        instead (log-variance clamped to [-30, 20] as in the LDM code). ``tile_size``/``tile_overlap`` in
        image pixels enable tiled encoding (H and W must then be multiples of the downscale factor).
        """
        f = self.config.downscale
        x = images.to(self.dtype)
        if tile_size is not None and max(x.shape[-2:]) > tile_size:
            if x.shape[-1] % f or x.shape[-2] % f or tile_size % f:
                raise ValueError(
                    f"tiled VAE encode needs image sides and tile_size that are multiples of {f}; got image "
                    f"{tuple(x.shape[-2:])}, tile_size {tile_size}"
                )
            moments = _run_tiled(
                self._moments, x, tile=tile_size, overlap=tile_overlap, align=f, num=1, den=f
            )
        else:
            moments = self._moments(x)
        mean, logvar = moments.chunk(2, dim=1)
        if generator is not None:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
            mean = mean + std * noise.to(mean.device)
        return mean.to(images.dtype)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode(
        self, latents: torch.Tensor, *, tile_size: int | None = None, tile_overlap: int = 64
    ) -> torch.Tensor:
        """Raw latents -> images (B, 3, 8h, 8w), nominally in -1..1 (not clamped).

        ``tile_size``/``tile_overlap`` are in image pixels (ComfyUI's VAEDecodeTiled convention: 512/64)
        and are rounded down to whole latent pixels.
        """
        f = self.config.downscale
        z = latents.to(self.dtype)
        if tile_size is not None and max(z.shape[-2:]) * f > tile_size:
            tile, overlap = max(1, tile_size // f), tile_overlap // f
            if overlap >= tile:
                raise ValueError(
                    f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size})"
                )
            out = _run_tiled(self._decode, z, tile=tile, overlap=overlap, align=1, num=f, den=1)
        else:
            out = self._decode(z)
        return out.to(latents.dtype)
