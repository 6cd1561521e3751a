"""The CLIP / SigLIP vision towers against transformers' CLIPVisionModelWithProjection and SiglipVisionModel
(fp32, tiny configs, the reference's own weights loaded through our loader), the OpenCLIP layout against the
HF layout, the configs read from real-sized shapes, and ComfyUI's preprocessing."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from engine.diffusion.vision.clip_vision import ClipVisionModel, VisionConfig
from engine.diffusion.vision.loading import (
    VisionWeightsError,
    build_clip_vision,
    openclip_visual_to_hf,
    vision_config_from_state_dict,
)
from engine.diffusion.vision.preprocess import clip_preprocess
from tests.factories.vision import clip_vision_state_dict, hf_to_openclip_visual

TOL = 1e-4


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Random init at a scale where the activation choice and every layer visibly matter.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clip_tower_matches_transformers(act):
    cfg = CLIPVisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=42,
        patch_size=14, projection_dim=16, hidden_act=act, layer_norm_eps=1e-5,
    )  # fmt: skip
    ref = _randomised(CLIPVisionModelWithProjection(cfg), 1)
    ours = build_clip_vision(ref.state_dict(), num_heads=4, activation=act)
    x = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(pixel_values=x, output_hidden_states=True)
        got = ours(x)
    assert (got.last_hidden_state - want.last_hidden_state).abs().max() <= TOL
    assert (got.image_embeds - want.image_embeds).abs().max() <= TOL
    # ComfyUI's penultimate_hidden_states is the output of the second-to-last layer.
    assert (got.penultimate_hidden_states - want.hidden_states[-2]).abs().max() <= TOL
    assert got.image_embeds.shape == (2, 16) and got.last_hidden_state.shape == (2, 10, 64)
    assert got.mm_projected is None


def test_siglip_tower_matches_transformers():
    cfg = SiglipVisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=42,
        patch_size=14, layer_norm_eps=1e-5,
    )  # fmt: skip
    ref = _randomised(SiglipVisionModel(cfg), 3)
    # Real SigLIP files keep the "vision_model." level that transformers >= 5 dropped from its attribute names.
    sd = {k if k.startswith("vision_model.") else "vision_model." + k: v for k, v in ref.state_dict().items()}
    ours = build_clip_vision(sd, num_heads=4)
    assert ours.config.kind == "siglip" and ours.config.activation == "gelu_pytorch_tanh"
    x = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref(pixel_values=x, output_hidden_states=True)
        got = ours(x, all_hidden_states=True)
    assert (got.last_hidden_state - want.last_hidden_state).abs().max() <= TOL
    assert (got.penultimate_hidden_states - want.hidden_states[-2]).abs().max() <= TOL
    # SigLIP has no projection: its image_embeds are the normalised tokens (ComfyUI's pooled output).
    assert torch.equal(got.image_embeds, got.last_hidden_state)
    assert got.hidden_states is not None and got.hidden_states.shape == (2, 3, 9, 64)
    assert torch.equal(got.hidden_states[:, -2], got.penultimate_hidden_states)


def test_openclip_layout_loads_to_the_same_tower():
    config = VisionConfig.tiny()
    hf = clip_vision_state_dict(config, seed=5)
    openclip = hf_to_openclip_visual(hf, "visual.")
    assert "visual.conv1.weight" in openclip and "visual.proj" in openclip
    assert openclip_visual_to_hf(openclip, "visual.").keys() == hf.keys()
    a, b = build_clip_vision(hf), build_clip_vision({**openclip, "logit_scale": torch.tensor(4.6)})
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (a(x).image_embeds - b(x).image_embeds).abs().max() <= 1e-6


@pytest.mark.parametrize(
    ("preset", "kind"),
    [
        (VisionConfig.vit_l(), "clip"),
        (VisionConfig.vit_l(336), "clip"),
        (VisionConfig.vit_h(), "clip"),
        (VisionConfig.vit_bigg(), "clip"),
        (VisionConfig.siglip(384), "siglip"),
        (VisionConfig.siglip(512), "siglip"),
    ],
)
def test_real_configs_are_read_from_shapes(preset, kind):
    shapes = ClipVisionModel(preset, device="meta").state_dict()
    assert vision_config_from_state_dict(shapes) == preset
    assert preset.kind == kind


def test_llava_projector_gives_mm_projected():
    config = VisionConfig(32, 2, 2, 64, 14, 28, projection_dim=16, llava_projector=True)
    sd = clip_vision_state_dict(config, seed=7)
    model = build_clip_vision(sd)
    assert model.config.llava_projector
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = model(x)
    w1, b1 = sd["multi_modal_projector.linear_1.weight"], sd["multi_modal_projector.linear_1.bias"]
    w2, b2 = sd["multi_modal_projector.linear_2.weight"], sd["multi_modal_projector.linear_2.bias"]
    patches = out.penultimate_hidden_states[:, 1:]
    want = torch.nn.functional.gelu(patches @ w1.T + b1) @ w2.T + b2
    assert out.mm_projected is not None and out.mm_projected.shape == (1, 4, 4096)
    assert (out.mm_projected - want).abs().max() <= 1e-4


def test_incomplete_weights_are_refused_with_the_key():
    sd = clip_vision_state_dict(VisionConfig.tiny(), seed=1)
    del sd["vision_model.encoder.layers.1.mlp.fc2.weight"]
    with pytest.raises(VisionWeightsError, match="layers.1.mlp.fc2.weight"):
        build_clip_vision(sd)
    with pytest.raises(VisionWeightsError, match="patch_embedding"):
        build_clip_vision({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 4)})


def test_preprocess_center_crop_and_squash():
    g = torch.Generator().manual_seed(9)
    square = torch.rand(1, 28, 28, 3, generator=g)
    out = clip_preprocess(square, 28, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    # Already at size: only 8-bit quantisation and normalisation.
    want = ((square * 255).round() / 255 - 0.5) / 0.25
    assert torch.allclose(out, want.movedim(-1, 1), atol=1e-6)
    # A wide image: "center" keeps the middle square, so a mark in the left margin disappears.
    wide = torch.full((1, 28, 56, 4), 0.5)
    wide[:, :, :10, :3] = 1.0
    centre = clip_preprocess(wide, 28, crop=True)
    squash = clip_preprocess(wide, 28, crop=False)
    assert centre.shape == squash.shape == (1, 3, 28, 28)
    grey = clip_preprocess(torch.full((1, 28, 28, 3), 0.5), 28)
    assert torch.allclose(centre, grey, atol=1e-5)
    assert (squash[..., :4] - grey[..., :4]).abs().min() > 0.5
