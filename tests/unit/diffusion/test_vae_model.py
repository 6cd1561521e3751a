"""AutoencoderKL: presets, config inference, key names, sampling, dtype and seamless tiling."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from engine.diffusion.checkpoints.detect_vae import vae_config_from_state_dict
from engine.diffusion.models.vae import (
    AutoencoderKL,
    VAEConfig,
    _run_tiled,
)


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(VAEConfig.tiny()).eval()


def test_sd_vae_parameter_count_and_keys() -> None:
    sd = AutoencoderKL(VAEConfig.sd(), device="meta").state_dict()
    assert sum(v.numel() for v in sd.values()) == 83_653_863  # kl-f8 autoencoder
    for key in [
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.2.downsample.conv.weight",
        "encoder.mid.attn_1.q.weight",
        "decoder.mid.attn_1.proj_out.weight",
        "decoder.up.3.block.2.conv2.weight",
        "decoder.up.3.upsample.conv.weight",
        "decoder.norm_out.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
    ]:
        assert key in sd, key
    assert "encoder.down.3.downsample.conv.weight" not in sd
    assert "decoder.up.0.upsample.conv.weight" not in sd
    assert sd["decoder.up.3.block.0.conv1.weight"].shape[0] == 512  # up.3 is the deepest stage
    assert sd["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)


@pytest.mark.parametrize(
    "cfg", [VAEConfig.sd(), VAEConfig.sdxl(), VAEConfig.tiny()], ids=["sd", "sdxl", "tiny"]
)
def test_config_inferred_from_state_dict(cfg: VAEConfig) -> None:
    sd = AutoencoderKL(cfg, device="meta").state_dict()
    assert vae_config_from_state_dict(sd, scaling_factor=cfg.scaling_factor) == cfg
    assert VAEConfig.sd().scaling_factor == 0.18215 and VAEConfig.sdxl().scaling_factor == 0.13025


def test_config_inference_errors_name_the_key() -> None:
    sd = AutoencoderKL(VAEConfig.tiny(), device="meta").state_dict()
    with pytest.raises(ValueError, match="encoder.conv_in.weight.*first_stage_model"):
        vae_config_from_state_dict({"first_stage_model." + k: v for k, v in sd.items()})
    with pytest.raises(ValueError, match="post_quant_conv.weight"):
        vae_config_from_state_dict({k: v for k, v in sd.items() if not k.startswith("post_quant")})


def test_encode_gives_the_raw_posterior_mean_and_samples(vae: AutoencoderKL) -> None:
    """Latents are raw (ComfyUI's LATENT space): the scale factor is the sampler's business."""
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(x)
        raw = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)[0]
        other = AutoencoderKL(dataclasses.replace(vae.config, scaling_factor=1.0))
        other.load_state_dict(vae.state_dict())
        other_mean = other.encode(x)
        s1 = vae.encode(x, generator=torch.Generator().manual_seed(7))
        s2 = vae.encode(x, generator=torch.Generator().manual_seed(7))
        decoded = vae.decode(mean)
        by_hand = vae.decoder(vae.post_quant_conv(mean))
    assert mean.shape == (1, 4, 8, 8)
    assert torch.allclose(mean, raw, atol=1e-6)
    assert torch.equal(mean, other_mean)
    assert torch.allclose(decoded, by_hand, atol=1e-6)
    assert torch.equal(s1, s2)
    assert (s1 - mean).abs().max() > 1e-3


def test_half_precision_model_returns_input_dtype(vae: AutoencoderKL) -> None:
    bf = AutoencoderKL(vae.config, dtype=torch.bfloat16)
    bf.load_state_dict(vae.state_dict())
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = bf.decode(z)
        ref = vae.decode(z)
    assert out.dtype == torch.float32
    assert (out - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_tile_blending_is_exact_for_pointwise_functions() -> None:
    x = torch.randn(2, 3, 37, 50)
    same = _run_tiled(lambda t: t, x, tile=16, overlap=6, align=1, num=1, den=1)
    assert torch.allclose(same, x, atol=1e-6)
    up = _run_tiled(
        lambda t: F.interpolate(t, scale_factor=2.0), x, tile=16, overlap=6, align=1, num=2, den=1
    )
    assert torch.allclose(up, F.interpolate(x, scale_factor=2.0), atol=1e-6)


def column_jumps(img: torch.Tensor) -> torch.Tensor:
    """Mean absolute step between neighbouring columns and rows (a seam shows as a spike)."""
    cols = (img[..., 1:] - img[..., :-1]).abs().mean(dim=(0, 1, 2))
    rows = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    return torch.cat([cols, rows])


@pytest.mark.slow
def test_tiled_decode_is_close_and_seamless(vae: AutoencoderKL) -> None:
    # Raw latents of the magnitude real SD1 latents have (unit variance in the model's space).
    z = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(1)) / 0.18215
    with torch.no_grad():
        full = vae.decode(z)
        tiled = vae.decode(z, tile_size=48, tile_overlap=16)  # 24-latent tiles, 8-latent overlap
        # hard-cut stitching of independently decoded tiles, to show the seam metric works
        naive = torch.zeros_like(full)
        for i in range(3):
            for j in range(3):
                naive[..., i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32] = vae.decode(
                    z[..., i * 16 : (i + 1) * 16, j * 16 : (j + 1) * 16]
                )
    assert tiled.shape == full.shape == (1, 3, 96, 96)
    assert (tiled - full).abs().mean() < 0.1 * full.abs().mean()
    # A seam is a step in the tiling error between neighbouring columns/rows; measure the largest
    # such step relative to the image's typical step.
    scale = column_jumps(full).median()
    tiled_excess = column_jumps(tiled - full).max() / scale
    naive_steps = column_jumps(naive - full)
    naive_excess = naive_steps.max() / scale
    assert naive_steps.argmax().item() in (31, 63, 95 + 31, 95 + 63)  # at the hard tile borders
    assert naive_excess > 0.5  # hard seams are detected by this metric ...
    assert tiled_excess < 0.25  # ... and the feathered blend leaves none


@pytest.mark.slow
def test_tiled_encode_is_close(vae: AutoencoderKL) -> None:
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        full = vae.encode(x)
        tiled = vae.encode(x, tile_size=64, tile_overlap=32)
    assert tiled.shape == full.shape == (1, 4, 48, 48)
    assert (tiled - full).abs().mean() < 0.1 * full.abs().mean()


def test_tiling_argument_errors(vae: AutoencoderKL) -> None:
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 33, 64), tile_size=32)
    with pytest.raises(ValueError, match="smaller than tile_size"):
        vae.decode(torch.zeros(1, 4, 40, 40), tile_size=32, tile_overlap=32)
