"""Stability AI's own SD3.5 ControlNets (sd3.5_large_controlnet_blur/canny/depth layout).

- parity: our model, built from a file in Stability's key names, against diffusers' ``SD3ControlNetModel`` in
  its SD3.5-large-ControlNet configuration (no text stream, no patch embedding of its own) given the same
  embedded tokens, with the weights moved by diffusers' own conversion rules (q/k/v split, renames);
- the fixed sin-cos grid against the formula written out by hand;
- the file's ``control_type`` picks ComfyUI's preprocessing, the hint goes through SD3's full latent format;
- in sampling: the guidance hands the sampled model to the control, which copies its patch embedding; strength
  0 is the plain model, strength 1 changes the prediction, and a different main patch embedding changes the
  ControlNet's residuals.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.diffusion.checkpoints.control_sd35 import (
    build_sd35_controlnet,
    is_stability_sd35_controlnet,
    sd35_controlnet_config,
    sd35_controlnet_to_ours,
)
from engine.diffusion.models import mmdit
from engine.diffusion.models.control_apply import fit_hint
from engine.diffusion.models.control_apply_mmdit import SD35ControlApplication, sd35_preprocess
from engine.diffusion.models.latent_formats import SD3
from engine.diffusion.models.mmdit_controlnet_sd35 import TINY, sincos_grid
from engine.diffusion.sampling.flow_models import mmdit_diffusion_model
from engine.diffusion.sampling.guidance import CFGDenoiser
from tests.factories.control_files import sd35_controlnet_state_dict
from tests.factories.random_weights import randomize_

MAIN = mmdit.TINY.replace(hidden_size=TINY.hidden_size, num_heads=2)


def stability_file(seed: int = 3, control_type: int | None = 1) -> dict[str, torch.Tensor]:
    return sd35_controlnet_state_dict(TINY, seed=seed, control_type=control_type)


def _main(seed: int = 1) -> mmdit.MMDiT:
    model = mmdit.MMDiT(MAIN)
    randomize_(model, seed, unit=("pos_embed",))
    return model.eval()


def test_file_layout_is_detected_and_the_config_read_from_shapes() -> None:
    sd = stability_file()
    assert is_stability_sd35_controlnet(sd)
    ours, kind = sd35_controlnet_to_ours(sd)
    assert kind == "canny" and "control_type" not in ours
    assert sd35_controlnet_config(ours) == TINY
    model = build_sd35_controlnet(sd)
    assert model.control_type == "canny" and model.config.main_depth == 2
    del sd["transformer_blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match=r"missing \['transformer_blocks.1.mlp.fc2.bias'\]"):
        build_sd35_controlnet(sd)


def test_it_refuses_to_run_before_borrowing_the_patch_embedding() -> None:
    model = build_sd35_controlnet(stability_file())
    x = torch.randn(1, 16, 4, 4)
    with pytest.raises(RuntimeError, match="borrow_embedder"):
        model(x, torch.tensor([10.0]), None, x)
    big = mmdit.MMDiT(mmdit.TINY)  # 64 channels: another model size
    with pytest.raises(ValueError, match="patch embedding"):
        model.borrow_embedder(big)


def test_sincos_grid_matches_the_written_out_formula() -> None:
    dim, h, w = 8, 2, 3
    got = sincos_grid(dim, h, w)[0]
    # the shorter side (2 rows) spans 0..15; the columns keep the aspect: 7.5 +- 11.25
    rows, cols = [0.0, 15.0], [-3.75, 7.5, 18.75]
    freqs = [1.0, 1.0 / 10000**0.5]  # dim/4 frequencies per axis
    for r in range(h):
        for c in range(w):
            col = [math.sin(cols[c] * f) for f in freqs] + [math.cos(cols[c] * f) for f in freqs]
            row = [math.sin(rows[r] * f) for f in freqs] + [math.cos(rows[r] * f) for f in freqs]
            torch.testing.assert_close(got[r * w + c], torch.tensor(col + row), atol=1e-6, rtol=0)


def _to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' conversion rules for these files (scripts/convert_sd3_controlnet_to_diffusers.py)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "control_type":
            continue
        if ".attn.qkv." in key:
            leaf = key.rsplit(".", 1)[1]
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0), strict=True):
                out[key.replace("attn.qkv." + leaf, f"attn.{name}.{leaf}")] = part
            continue
        new = (
            key.replace(".attn.proj.", ".attn.to_out.0.")
            .replace(".mlp.fc1.", ".ff.net.0.proj.")
            .replace(".mlp.fc2.", ".ff.net.2.")
            .replace(".adaLN_modulation.1.", ".norm1.linear.")
        )
        out[new] = value
    return out


def test_parity_with_diffusers_sd35_controlnet() -> None:
    diffusers = pytest.importorskip("diffusers")
    sd = stability_file(seed=5)
    reference = diffusers.SD3ControlNetModel(
        patch_size=2,
        in_channels=16,
        num_layers=TINY.num_blocks,
        attention_head_dim=64,
        num_attention_heads=TINY.num_heads,
        joint_attention_dim=None,
        caption_projection_dim=TINY.hidden_size,
        pooled_projection_dim=TINY.adm_in_channels,
        out_channels=16,
        pos_embed_max_size=None,
        pos_embed_type=None,
        use_pos_embed=False,
        force_zeros_for_pooled_projection=False,
    ).eval()
    reference.load_state_dict(_to_diffusers(sd), strict=True)
    ours = build_sd35_controlnet(sd).eval()
    main = _main()
    ours.borrow_embedder(main)
    gen = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 16, 6, 8, generator=gen), torch.randn(2, 16, 6, 8, generator=gen)
    pooled, t = torch.randn(2, 24, generator=gen), torch.tensor([700.0, 20.0])
    with torch.no_grad():
        got = ours(x, t, pooled, hint)["output"]
        # diffusers' SD3.5 ControlNet takes the image tokens already embedded (by the transformer).
        tokens = main.x_embedder(x) + sincos_grid(TINY.hidden_size, 3, 4)
        want = reference(tokens, hint, 1.0, None, pooled, t, return_dict=False)[0]
    assert len(got) == len(want) == 2  # main depth 2 / 2 blocks: each residual once
    for g, r in zip(got, want, strict=True):
        assert g is not None
        assert (g - r).abs().max() <= 1e-4


def test_hint_preprocessing_follows_the_control_type() -> None:
    px = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(sd35_preprocess(px, "canny"), torch.tensor([0.5, 32.375, 128.0]))
    torch.testing.assert_close(sd35_preprocess(px, "depth"), torch.tensor([1.0, 0.75, 0.0]))
    assert torch.equal(sd35_preprocess(px, "blur"), px) and torch.equal(sd35_preprocess(px, None), px)


def _stand_in_vae(calls: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    def encode(pixels: torch.Tensor) -> torch.Tensor:  # 2x downscale, 16 channels
        calls.append(pixels.clone())
        return pixels.mean(1, keepdim=True)[:, :, ::2, ::2].repeat(1, 16, 1, 1)

    return encode


@pytest.mark.parametrize(("control_type", "name"), [(1, "canny"), (2, "depth"), (0, "blur")])
def test_hint_is_preprocessed_then_mapped_with_sd3s_scale_and_shift(control_type: int, name: str) -> None:
    model = build_sd35_controlnet(stability_file(control_type=control_type))
    calls: list[torch.Tensor] = []
    image = torch.rand(1, 3, 16, 12)
    app = SD35ControlApplication(model, image, encode=_stand_in_vae(calls), downscale=2)
    latent = app._control_latent(4, 6)
    expected_pixels = sd35_preprocess(fit_hint(image, 8, 12), name)
    assert len(calls) == 1 and torch.equal(calls[0], expected_pixels)
    torch.testing.assert_close(latent, (_stand_in_vae([])(expected_pixels) - 0.0609) * 1.5305)
    assert SD3.shift_factor == 0.0609


def _denoise(main: mmdit.MMDiT, control: SD35ControlApplication | None, x: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    ctx, pooled = torch.randn(1, 5, 40, generator=gen), torch.randn(1, 24, generator=gen)
    opts: dict[str, object] = {"pooled_output": pooled}
    if control is not None:
        opts["control"] = control
    den = CFGDenoiser(mmdit_diffusion_model(main), [[ctx, opts]], None, 1.0, like=x)
    with torch.no_grad():
        return den(x, torch.tensor([0.6]))


def test_sampling_binds_the_model_and_the_control_steers_it() -> None:
    main = _main()
    cn = build_sd35_controlnet(stability_file(control_type=2))
    image = torch.rand(1, 3, 8, 8)
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    calls: list[torch.Tensor] = []

    def app(strength: float) -> SD35ControlApplication:
        return SD35ControlApplication(cn, image, encode=_stand_in_vae(calls), downscale=2, strength=strength)

    plain = _denoise(main, None, x)
    assert not cn.borrowed
    off = _denoise(main, app(0.0), x)
    assert torch.equal(off, plain)
    assert cn.borrowed  # the guidance bound the model before sampling
    torch.testing.assert_close(cn.x_embedder.proj.weight, main.x_embedder.proj.weight, atol=0, rtol=0)
    on = _denoise(main, app(1.0), x)
    assert (on - plain).abs().max() > 1e-3
    # The residuals follow the sampled model's patch embedding (copied at every run, as ComfyUI does).
    other = _main(seed=9)
    other.load_state_dict(
        {k: v for k, v in main.state_dict().items() if not k.startswith("x_embedder.")}, strict=False
    )
    on_other = _denoise(other, app(1.0), x)
    plain_other = _denoise(other, None, x)
    assert not torch.allclose(on_other - plain_other, on - plain)
