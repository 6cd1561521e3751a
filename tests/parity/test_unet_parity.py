"""Parity: our UNet vs diffusers' UNet2DConditionModel given the same (tiny, random) weights.

The reference model is loaded through diffusers' own single-file conversion
(``convert_ldm_unet_checkpoint``) of a checkpoint written in the original layout
(``model.diffusion_model.*``), so the test also checks our parameter names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import diffusers
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import load_file, save_file

from engine.diffusion.models.sdxl_conditioning import sdxl_adm
from engine.diffusion.models.unet import UNetConfig, UNetModel

pytestmark = [pytest.mark.parity, pytest.mark.slow]


PREFIX = "model.diffusion_model."


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights; norm scales and all biases perturbed too, so a swapped key cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:  # biases around 0, norm scales around 1
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


def diffusers_config(cfg: UNetConfig) -> dict:
    """A UNet2DConditionModel config with the same shape (uniform blocks per level, as diffusers needs)."""
    levels = len(cfg.channel_mult)
    nrb = cfg.num_res_blocks[0]
    assert all(n == nrb for n in cfg.num_res_blocks)
    depth = [cfg.transformer_depth[level * nrb] for level in range(levels)]
    assert cfg.transformer_depth_middle == depth[-1]
    channels = [cfg.model_channels * m for m in cfg.channel_mult]
    config = {
        "sample_size": 16,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depth)],
        "block_out_channels": channels,
        "layers_per_block": nrb,
        "cross_attention_dim": cfg.context_dim,
        # diffusers' historical naming: attention_head_dim holds the number of heads per level.
        "attention_head_dim": [cfg.heads_for(c)[0] for c in channels],
        "use_linear_projection": cfg.use_linear_in_transformer,
        "transformer_layers_per_block": [max(d, 1) for d in depth],
    }
    if cfg.adm_in_channels is not None:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=cfg.adm_in_channels,
        )
    return config


def build_pair(cfg: UNetConfig, tmp_path: Path, seed: int = 0):
    ours = UNetModel(cfg).eval()
    randomize_(ours, seed)
    # Write and re-read a real single-file checkpoint in the original layout.
    path = tmp_path / "unet.safetensors"
    save_file({PREFIX + k: v.contiguous() for k, v in ours.state_dict().items()}, str(path))
    checkpoint = load_file(str(path))
    config = diffusers_config(cfg)
    converted = convert_ldm_unet_checkpoint(checkpoint, config)
    ref = diffusers.UNet2DConditionModel(**config).eval()
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours, ref


def inputs(cfg: UNetConfig, seed: int = 1, size: int = 16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.in_channels, size, size, generator=gen)
    t = torch.tensor([10.0, 700.0])
    ctx = torch.randn(2, 7, cfg.context_dim, generator=gen)
    return x, t, ctx


SD1 = UNetConfig.tiny()  # conv proj_in/out, 8 heads
SD2 = UNetConfig.tiny_sd2()  # linear proj, 64-channel heads
SD2_HEADS16 = dataclasses.replace(SD2, num_head_channels=16)  # several heads with the head-size rule


@pytest.mark.parametrize("cfg", [SD1, SD2, SD2_HEADS16], ids=["sd1", "sd2", "sd2-16ch-heads"])
def test_unet_matches_diffusers(cfg: UNetConfig, tmp_path: Path) -> None:
    ours, ref = build_pair(cfg, tmp_path)
    x, t, ctx = inputs(cfg)
    with torch.no_grad():
        a = ours(x, t, ctx)
        b = ref(x, t, encoder_hidden_states=ctx).sample
    assert a.shape == b.shape == x.shape
    assert b.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    assert (a - b).abs().max().item() <= 1e-4


def test_unet_inpaint_9_channels_matches_diffusers(tmp_path: Path) -> None:
    cfg = UNetConfig.tiny(in_channels=9)
    ours, ref = build_pair(cfg, tmp_path, seed=3)
    x, t, ctx = inputs(cfg)
    with torch.no_grad():
        a = ours(x, t, ctx)
        b = ref(x, t, encoder_hidden_states=ctx).sample
    assert a.shape == (2, 4, 16, 16)
    assert (a - b).abs().max().item() <= 1e-4


def test_unet_odd_latent_size_matches_diffusers(tmp_path: Path) -> None:
    ours, ref = build_pair(SD1, tmp_path, seed=4)
    x, t, ctx = inputs(SD1, size=9)
    with torch.no_grad():
        a = ours(x, t, ctx)
        b = ref(x, t, encoder_hidden_states=ctx).sample
    assert (a - b).abs().max().item() <= 1e-4


def test_sdxl_unet_with_adm_matches_diffusers(tmp_path: Path) -> None:
    cfg = UNetConfig.tiny_sdxl()
    ours, ref = build_pair(cfg, tmp_path, seed=2)
    x, t, ctx = inputs(cfg)
    pooled = torch.randn(2, cfg.adm_in_channels - 6 * 256, generator=torch.Generator().manual_seed(5))
    size = {
        "width": 1024,
        "height": 768,
        "crop_w": 16,
        "crop_h": 48,
        "target_width": 896,
        "target_height": 640,
    }
    y = sdxl_adm(pooled, **size)
    # diffusers' time_ids order: original (h, w), crop (top, left), target (h, w)
    time_ids = torch.tensor([[768.0, 1024.0, 48.0, 16.0, 640.0, 896.0]]).repeat(2, 1)
    with torch.no_grad():
        a = ours(x, t, ctx, y=y)
        b = ref(
            x, t, encoder_hidden_states=ctx, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
        ).sample
        # the size conditioning really reaches the output
        c = ours(x, t, ctx, y=sdxl_adm(pooled, **{**size, "crop_h": 0}))
    assert (a - b).abs().max().item() <= 1e-4
    assert (a - c).abs().max().item() > 1e-3
