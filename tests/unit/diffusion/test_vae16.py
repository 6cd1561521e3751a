"""The 16-channel VAE of SD3 / FLUX.1: no quant convs, latents normalised with a shift and a scale."""

from __future__ import annotations

import torch

from engine.diffusion.checkpoints.detect_vae import vae_config_from_state_dict
from engine.diffusion.models import latent_formats
from engine.diffusion.models.vae import AutoencoderKL, VAEConfig, _run_tiled
from tests.factories.flow_checkpoints import tiny_vae16_config
from tests.factories.random_weights import randomize_


def _vae(family: str, seed: int = 0) -> AutoencoderKL:
    model = AutoencoderKL(tiny_vae16_config(family)).eval()
    randomize_(model, seed)
    return model


def test_presets_match_the_latent_formats_and_build_no_quant_convs() -> None:
    for cfg, fmt in ((VAEConfig.sd3(), latent_formats.SD3), (VAEConfig.flux(), latent_formats.FLUX)):
        assert (cfg.scaling_factor, cfg.shift_factor) == (fmt.scale_factor, fmt.shift_factor)
        assert (cfg.z_channels, cfg.embed_dim, cfg.use_quant_conv, cfg.ch_mult) == (
            16,
            16,
            False,
            (1, 2, 4, 4),
        )
        model = AutoencoderKL(cfg, device="meta")
        assert model.quant_conv is None and model.post_quant_conv is None
        assert not any("quant_conv" in k for k in model.state_dict())
    # The SD1/SDXL VAE keeps its quant convs and an unshifted latent.
    assert AutoencoderKL(VAEConfig.tiny(), device="meta").quant_conv is not None
    assert VAEConfig.sdxl().shift_factor == 0.0


def test_dtype_is_read_without_quant_convs() -> None:
    model = AutoencoderKL(tiny_vae16_config("sd3"), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_encode_gives_raw_latents_without_shift_or_scale() -> None:
    """The shift/scale of the SD3/Flux formats is applied by the sampler, not the VAE (as ComfyUI)."""
    model = _vae("flux")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        raw_mean = model.encoder(x).chunk(2, dim=1)[0]
        z = model.encode(x)
    assert torch.allclose(z, raw_mean, atol=1e-6)


def test_sampled_encode_samples_the_raw_posterior() -> None:
    model = _vae("sd3")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        mean, logvar = model.encoder(x).chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
        expected = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise
        z = model.encode(x, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(z, expected, atol=1e-5)


def test_decode_takes_raw_latents_also_when_tiled() -> None:
    model = _vae("flux")
    z = torch.randn(1, 16, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model.decode(z)
        assert torch.allclose(whole, model.decoder(z), atol=1e-5)
        tiled = model.decode(z, tile_size=16, tile_overlap=8)
        expected = _run_tiled(model._decode, z, tile=8, overlap=4, align=1, num=2, den=1)
    assert torch.allclose(tiled, expected, atol=1e-5)


def test_config_is_read_back_from_a_quant_conv_free_state_dict() -> None:
    model = _vae("sd3")
    fmt = latent_formats.SD3
    read = vae_config_from_state_dict(
        model.state_dict(), scaling_factor=fmt.scale_factor, shift_factor=fmt.shift_factor
    )
    assert read == model.config
    # With quant convs present (SD1 layout) the flag stays on.
    sd1 = AutoencoderKL(VAEConfig.tiny(), device="meta").state_dict()
    assert vae_config_from_state_dict(sd1).use_quant_conv is True
