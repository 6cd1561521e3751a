"""Latent formats: the per-family map from raw VAE latents (LATENT values) into the model's space."""

from __future__ import annotations

import torch

from engine.diffusion.models import latent_formats as lf


def test_family_formats_are_comfyuis_values() -> None:
    for family in ("sd1", "sd2", "sd2_v"):
        assert (lf.for_family(family).scale_factor, lf.for_family(family).shift_factor) == (0.18215, 0.0)
    for family in ("sdxl", "sdxl_refiner"):
        assert lf.for_family(family).scale_factor == 0.13025
    assert (lf.for_family("sd3").scale_factor, lf.for_family("sd3").shift_factor) == (1.5305, 0.0609)
    assert (lf.for_family("flux").scale_factor, lf.for_family("flux").shift_factor) == (0.3611, 0.1159)
    assert lf.for_family("something_else") is lf.IDENTITY


def test_process_in_and_out_invert_each_other() -> None:
    raw = torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lf.FLUX.process_in(raw), (raw - 0.1159) * 0.3611)
    torch.testing.assert_close(lf.FLUX.process_out(lf.FLUX.process_in(raw)), raw)
    torch.testing.assert_close(lf.SD15.process_in(raw[:, :4]), raw[:, :4] * 0.18215)


def test_latent_in_leaves_an_empty_latent_unshifted() -> None:
    """ComfyUI's guider skips process_in for an all-zero latent: SD3/Flux txt2img starts from zeros."""
    empty = torch.zeros(1, 16, 4, 4)
    assert torch.equal(lf.latent_in(lf.FLUX, empty), empty)
    one = empty.clone()
    one[0, 0, 0, 0] = 1.0
    torch.testing.assert_close(lf.latent_in(lf.FLUX, one), lf.FLUX.process_in(one))
