"""Parity: the 16-channel VAE of SD3 / FLUX.1 vs diffusers' AutoencoderKL, same tiny random weights.

The SD3 and Flux VAE files have no ``quant_conv``/``post_quant_conv`` (diffusers: ``use_quant_conv=False``)
and normalise latents with a shift as well as a scale. Ours is built from the ``VAEConfig.sd3()`` /
``VAEConfig.flux()`` presets (at test size), its config read back from the file, and loaded strictly;
its encode/decode apply the shift and scale themselves. The reference loads the same file through
diffusers' own ``convert_ldm_vae_checkpoint`` and normalises with its own config factors.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file, save_file

from engine.diffusion.checkpoints.detect_vae import vae_config_from_state_dict
from engine.diffusion.models import latent_formats
from engine.diffusion.models.latent_formats import LatentFormat
from engine.diffusion.models.vae import AutoencoderKL, VAEConfig
from tests.factories.random_weights import randomize_

pytestmark = [pytest.mark.parity, pytest.mark.slow]

PREFIX = "first_stage_model."
PRESETS = {"sd3": VAEConfig.sd3(), "flux": VAEConfig.flux()}


def tiny(preset: VAEConfig) -> VAEConfig:
    # Three levels so the decoder's reversed up.N order is exercised; the preset's latent format kept.
    return VAEConfig(**{**preset.__dict__, "ch": 32, "ch_mult": (1, 2, 2), "num_res_blocks": 1})


@pytest.fixture(scope="module", params=[latent_formats.SD3, latent_formats.FLUX], ids=["sd3", "flux"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    fmt: LatentFormat = request.param
    cfg = tiny(PRESETS[fmt.name])
    source = AutoencoderKL(cfg).eval()
    randomize_(source, 0)
    # A file in the SD3 single-file layout: no quant convs (the preset builds none).
    sd = {PREFIX + k: v.contiguous() for k, v in source.state_dict().items()}
    assert not any("quant_conv" in k for k in sd)
    path = tmp_path_factory.mktemp("vae16") / "vae.safetensors"
    save_file(sd, str(path))
    checkpoint = load_file(str(path))
    body = {k[len(PREFIX) :]: v for k, v in checkpoint.items()}
    read = vae_config_from_state_dict(body, scaling_factor=fmt.scale_factor, shift_factor=fmt.shift_factor)
    assert read == cfg
    ours = AutoencoderKL(read).eval()
    ours.load_state_dict(body, strict=True)
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 32,
        "scaling_factor": fmt.scale_factor,
        "shift_factor": fmt.shift_factor,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }
    ref = diffusers.AutoencoderKL(**config).eval()
    missing, unexpected = ref.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return fmt, ours, ref


def test_vae16_encode_matches_diffusers(pair) -> None:
    fmt, ours, ref = pair
    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a = ours.encode(x)
        # Raw latents on both sides: the shift and scale belong to the sampler (latent_formats).
        b = ref.encode(x).latent_dist.mean
    assert a.shape == (2, 16, 8, 6)
    assert b.abs().max() > 0.05
    assert (a - b).abs().max().item() <= 1e-4 / min(ref.config.scaling_factor, 1.0)


def test_vae16_decode_matches_diffusers(pair) -> None:
    fmt, ours, ref = pair
    z = torch.randn(2, 16, 8, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ours.decode(z)
        b = ref.decode(z).sample
    assert a.shape == (2, 3, 32, 24)
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() <= 1e-4


def test_vae_presets_carry_the_latent_formats() -> None:
    # VAEConfig.sd3()/flux() and latent_formats must agree (the VAE normalises, the model sees the result).
    for name, fmt in (("sd3", latent_formats.SD3), ("flux", latent_formats.FLUX)):
        cfg = PRESETS[name]
        assert (cfg.scaling_factor, cfg.shift_factor) == (fmt.scale_factor, fmt.shift_factor)
        assert (cfg.z_channels, cfg.embed_dim, cfg.use_quant_conv) == (16, 16, False)


def test_latent_format_round_trip_and_constants() -> None:
    # Values of ComfyUI's comfy/latent_formats.py (SD3, Flux) and the diffusers VAE configs.
    assert (latent_formats.SD3.scale_factor, latent_formats.SD3.shift_factor) == (1.5305, 0.0609)
    assert (latent_formats.FLUX.scale_factor, latent_formats.FLUX.shift_factor) == (0.3611, 0.1159)
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    for fmt in (latent_formats.SD3, latent_formats.FLUX):
        assert torch.allclose(fmt.process_out(fmt.process_in(z)), z, atol=1e-6)
        assert torch.allclose(fmt.process_in(torch.full((1,), fmt.shift_factor)), torch.zeros(1))
