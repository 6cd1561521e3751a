"""SD3 ControlNet files and application: the single-file (ComfyUI-converted) names load as they are with the
config read from shapes, residuals repeat over the main model's blocks as ComfyUI's do, Stability's own
SD3.5 ControlNet layout is refused by name, and the control image is VAE-encoded at the latent's size and
scaled by SD3's factor without the shift (once per size)."""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.checkpoints.control_mmdit import (
    build_mmdit_controlnet,
    is_mmdit_controlnet,
    mmdit_controlnet_config,
)
from engine.diffusion.models.control_apply import fit_hint
from engine.diffusion.models.control_apply_mmdit import MMDiTControlApplication
from engine.diffusion.models.mmdit_controlnet import TINY, MMDiTControlNet
from engine.diffusion.sampling.model_sampling import sd3_model_sampling
from tests.factories.random_weights import randomize_


def _state() -> dict[str, torch.Tensor]:
    model = MMDiTControlNet(TINY)
    randomize_(model, 4, unit=("pos_embed",))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_single_file_names_load_with_the_config_from_shapes() -> None:
    sd = _state()
    assert is_mmdit_controlnet(sd)
    assert mmdit_controlnet_config(sd) == TINY
    a, b = MMDiTControlNet(TINY), build_mmdit_controlnet(sd)
    a.load_state_dict(sd)
    gen = torch.Generator().manual_seed(0)
    x, hint = torch.randn(1, 16, 6, 4, generator=gen), torch.randn(1, 16, 6, 4, generator=gen)
    ctx = torch.randn(1, 5, 40, generator=gen)
    with torch.no_grad():
        out_a = a(x, torch.tensor([500.0]), ctx, hint)["output"]
        out_b = b(x, torch.tensor([500.0]), ctx, hint)["output"]
    # main depth 4 // 2 blocks: block 0's residual after main blocks 0 and 1, block 1's after block 2.
    assert len(out_b) == 3 and out_b[0] is out_b[1] and out_b[1] is not out_b[2]
    assert out_b[0] is not None and out_b[0].shape == (1, 3 * 2, 256)
    for p, q in zip(out_a, out_b, strict=True):
        assert p is not None and q is not None and torch.equal(p, q)


def test_pooled_vector_is_ignored() -> None:
    model = build_mmdit_controlnet(_state())
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        a = model(x, torch.tensor([10.0]), None, x, y=torch.randn(1, 24))["output"][0]
        b = model(x, torch.tensor([10.0]), None, x, y=None)["output"][0]
    assert a is not None and b is not None and torch.equal(a, b)


def test_stability_sd35_layout_is_refused_by_name() -> None:
    sd = _state()
    sd["transformer_blocks.0.adaLN_modulation.1.bias"] = torch.zeros(4)
    with pytest.raises(ValueError, match="Stability AI's own SD3.5 ControlNets"):
        build_mmdit_controlnet(sd)


def test_hint_is_vae_encoded_per_latent_size_and_scaled_without_shift() -> None:
    model = build_mmdit_controlnet(_state())
    calls: list[tuple[int, ...]] = []

    def encode(pixels: torch.Tensor) -> torch.Tensor:  # a stand-in VAE with a 2x downscale
        calls.append(tuple(pixels.shape))
        return pixels.mean(1, keepdim=True)[:, :, ::2, ::2].repeat(1, 16, 1, 1)

    image = torch.rand(1, 3, 20, 20)
    app = MMDiTControlApplication(model, image, encode=encode, downscale=2, strength=0.5)
    app.pre_run(sd3_model_sampling(3.0))
    x = torch.randn(2, 16, 6, 4)
    sigma = torch.tensor([0.7, 0.7])
    ctx = torch.randn(2, 3, 40)
    first = app.get_control(x, sigma, ctx, None)
    app.get_control(x, sigma, ctx, None)
    assert calls == [(1, 3, 12, 8)]  # the latent's size times the downscale, encoded once
    # fit_hint (tested with the UNet ControlNets) crops to the latent's aspect and resizes.
    expected_hint = encode(fit_hint(image, 12, 8)) * 1.5305  # SD3's scale, no shift
    with torch.no_grad():
        want = model(x, sd3_model_sampling(3.0).model_timestep(sigma), ctx, expected_hint.repeat(2, 1, 1, 1))
    assert first is not None
    got, ref = first["output"][0], want["output"][0]
    assert got is not None and ref is not None
    torch.testing.assert_close(got, ref * 0.5)


def test_mmdit_runs_without_text_tokens() -> None:
    # An empty token sequence used to fail reshaping its (0-element) q/k/v into heads.
    from engine.diffusion.models.mmdit import TINY as MAIN_TINY
    from engine.diffusion.models.mmdit import MMDiT

    model = MMDiT(MAIN_TINY)
    with torch.no_grad():
        out = model(torch.randn(1, 16, 4, 4), torch.tensor([500.0]), context=None)
    assert out.shape == (1, 16, 4, 4) and torch.isfinite(out).all()
