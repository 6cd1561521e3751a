"""Tiny random-weight files of the UNet variants in their real key layouts, for tests.

- ``write_variant_checkpoint(path, "ip2p" | "depth" | "x4_upscaler")``: a single-file checkpoint
  (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``) whose UNet has the
  variant's input channels: InstructPix2Pix (SD1, 8), SD2 depth (5), the SD x4 upscaler (SD2 text
  encoder, 7 input channels, ``label_emb.weight`` with 1000 classes, attn1 reading the text at level 1,
  8 heads; its VAE has three levels, i.e. 4x down/upscaling, as the real one). As in the released files,
  the x4 file also holds its noise-schedule buffers (``betas``..., ``low_scale_model.*``) and the depth
  file a ``depth_model.*`` (MiDaS) key, which loading skips.
- ``write_gligen_file(path, unet_config)``: a GLIGEN file (``position_net.*`` and one
  ``...transformer_blocks.0.fuser.*`` group per UNet transformer) for a UNet of that config; the key
  width is 768 as in the released SD1 GLIGEN, the phrase width that of the tiny CLIP (32).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints import diffusers_layout as dl
from engine.diffusion.checkpoints.detect_variant import X4_VAE_SCALE
from engine.diffusion.checkpoints.spec import UNET_PREFIX, VAE_PREFIX, ModelFamily
from engine.diffusion.models.gligen import GatedSelfAttention, PositionNet
from engine.diffusion.models.unet import UNetConfig
from engine.diffusion.models.vae import VAEConfig

from .checkpoints import random_state_dict, tiny_single_file_state_dict, unet_shapes, vae_shapes

GLIGEN_KEY_DIM = 768


def x4_unet_config() -> UNetConfig:
    """x4-upscaling.yaml in small: no attention at the top level, attn1 on the text at level 1 (64 channels
    against a 32-wide context, so the file shows it), 8 heads, linear projections, 1000 noise classes."""
    return UNetConfig.from_levels(
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        level_depth=(0, 1, 1),
        middle_depth=1,
        in_channels=7,
        model_channels=32,
        context_dim=32,
        num_heads=8,
        use_linear_in_transformer=True,
        num_classes=1000,
        disable_self_attentions=(False, True, False),
    )


def x4_vae_config() -> VAEConfig:
    return VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, scaling_factor=X4_VAE_SCALE)


def variant_parts(variant: str) -> tuple[ModelFamily, UNetConfig, VAEConfig]:
    if variant == "ip2p":
        return ModelFamily.SD1, UNetConfig.tiny(in_channels=8), VAEConfig.tiny()
    if variant == "depth":
        return ModelFamily.SD2, UNetConfig.tiny_sd2(in_channels=5), VAEConfig.tiny()
    if variant == "x4_upscaler":
        return ModelFamily.SD2, x4_unet_config(), x4_vae_config()
    raise ValueError(f"unknown variant {variant!r}")


def variant_state_dict(variant: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    family, unet_cfg, vae_cfg = variant_parts(variant)
    # The text encoder (and its prefix) of the family's tiny checkpoint; UNet and VAE replaced.
    base = tiny_single_file_state_dict(family, seed=seed, with_vae=False)
    sd = {k: v for k, v in base.items() if not k.startswith(UNET_PREFIX)}
    sd.update(dl.add_prefix(random_state_dict(unet_shapes(unet_cfg), seed=seed + 11), UNET_PREFIX))
    sd.update(dl.add_prefix(random_state_dict(vae_shapes(vae_cfg), seed=seed + 12), VAE_PREFIX))
    if variant == "depth":
        # 512-depth-ema also carries its MiDaS (DPT) depth estimator under depth_model.*, unused here.
        sd["depth_model.model.pretrained.model.cls_token"] = torch.zeros(1, 1, 8)
    if variant == "x4_upscaler":
        # The released file also stores its two noise schedules as buffers (the model's, and the
        # low-resolution image's noise augmentation), both linear 1e-4..2e-2: loaders must skip them.
        buffers = _schedule_buffers(1e-4, 2e-2)
        sd.update(buffers)
        sd.update({"low_scale_model." + k: v.clone() for k, v in buffers.items()})
    return sd


def _schedule_buffers(start: float, end: float) -> dict[str, torch.Tensor]:
    betas = torch.linspace(start**0.5, end**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return {
        "betas": betas.float(),
        "alphas_cumprod": abar.float(),
        "alphas_cumprod_prev": prev.float(),
        "sqrt_alphas_cumprod": abar.sqrt().float(),
        "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt().float(),
    }


def write_variant_checkpoint(path: str | os.PathLike[str], variant: str, *, seed: int = 0) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(variant_state_dict(variant, seed=seed), str(p), metadata={"format": "pt"})
    return p


def _transformer_blocks(config: UNetConfig) -> list[tuple[str, int, int]]:
    """(block kind, block number, channels) of each transformer, in UNet order."""
    mc = config.model_channels
    out: list[tuple[str, int, int]] = []
    depth_in = iter(config.transformer_depth)
    index = 1
    for level, mult in enumerate(config.channel_mult):
        for _ in range(config.num_res_blocks[level]):
            if next(depth_in):
                out.append(("input_blocks", index, mc * mult))
            index += 1
        if level != len(config.channel_mult) - 1:
            index += 1
    if config.middle_block and config.transformer_depth_middle:
        out.append(("middle_block", 1, mc * config.channel_mult[-1]))
    depth_out = iter(config.transformer_depth_output)
    index = 0
    for level, mult in reversed(list(enumerate(config.channel_mult))):
        for _ in range(config.num_res_blocks[level] + 1):
            if next(depth_out):
                out.append(("output_blocks", index, mc * mult))
            index += 1
    return out


def gligen_state_dict(
    unet_config: UNetConfig, *, phrase_dim: int = 32, seed: int = 0, gate: float | None = None
) -> dict[str, torch.Tensor]:
    """A GLIGEN model's weights for a UNet of ``unet_config``. ``gate``: the value of every fuser's
    alpha_attn / alpha_dense (None: random ones, as training leaves them nonzero; 0: no effect)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for kind, number, ch in _transformer_blocks(unet_config):
        fuser = GatedSelfAttention(ch, GLIGEN_KEY_DIM, 8, ch // 8, device="meta")
        shapes = {k: tuple(v.shape) for k, v in fuser.state_dict().items()}
        weights = random_state_dict(shapes, seed=int(torch.randint(0, 2**30, (1,), generator=g)))
        for alpha in ("alpha_attn", "alpha_dense"):
            weights[alpha] = torch.tensor(
                gate if gate is not None else 0.5 + torch.rand((), generator=g).item()
            )
        sd.update({f"{kind}.{number}.1.transformer_blocks.0.fuser.{k}": v for k, v in weights.items()})
    net = PositionNet(phrase_dim, GLIGEN_KEY_DIM, device="meta")
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for k, v in random_state_dict(shapes, seed=seed + 1).items():
        sd[f"position_net.{k}"] = v
    return sd


def write_gligen_file(
    path: str | os.PathLike[str], unet_config: UNetConfig | None = None, **kwargs: object
) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    cfg = unet_config if unet_config is not None else UNetConfig.tiny()
    save_file(gligen_state_dict(cfg, **kwargs), str(p))  # type: ignore[arg-type]
    return p


__all__ = [
    "gligen_state_dict",
    "variant_parts",
    "variant_state_dict",
    "write_gligen_file",
    "write_variant_checkpoint",
    "x4_unet_config",
    "x4_vae_config",
]
