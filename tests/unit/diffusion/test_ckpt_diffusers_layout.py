"""Our diffusers <-> original key mappings checked against diffusers' own single-file conversion.

For each tiny config we take a random diffusers model's state dict, map it to the original layout
with our code, hand that to ``diffusers.loaders.single_file_utils`` (an independent implementation
of original -> diffusers) and require the exact diffusers state dict back. The inverse mapping is
checked to be a bijection on the same data.
"""

from __future__ import annotations

import diffusers
import diffusers.loaders.single_file_utils as sfu
import pytest
import torch

from engine.diffusion.checkpoints import clip_text as ct
from engine.diffusion.checkpoints import diffusers_layout as dl


def _randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


UNET_CONFIGS = {
    # SD1-like: conv projection in transformers, attention in all but the last level.
    "sd1": dict(
        block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=24,
        attention_head_dim=8,
        norm_num_groups=8,
        sample_size=16,
    ),
    # SD2-like: linear projection, per-level head dims, 9-channel inpainting input.
    "sd2_inpaint": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        in_channels=9,
        cross_attention_dim=40,
        attention_head_dim=(4, 8),
        use_linear_projection=True,
        norm_num_groups=8,
        sample_size=16,
    ),
    # SDXL-like: no attention in level 0, deeper transformers, text_time add_embedding.
    "sdxl": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 3),
        cross_attention_dim=48,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
        norm_num_groups=8,
        sample_size=16,
    ),
}


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_ckpt_unet_mapping_matches_diffusers_conversion(name: str) -> None:
    unet = diffusers.UNet2DConditionModel(**UNET_CONFIGS[name])
    d_sd = _randomise(unet, seed=1)
    orig = dl.unet_diffusers_to_original(d_sd)

    # Spot-check a few names that must follow the LDM numbering.
    assert "input_blocks.0.0.weight" in orig and "out.2.weight" in orig
    assert "middle_block.1.proj_in.weight" in orig
    assert "input_blocks.1.0.in_layers.0.weight" in orig
    if name == "sdxl":
        assert "label_emb.0.0.weight" in orig
        assert "input_blocks.1.1.norm.weight" not in orig  # level 0 has no attention in SDXL
        assert "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight" in orig

    back = sfu.convert_ldm_unet_checkpoint(dl.add_prefix(orig, "model.diffusion_model."), unet.config)
    assert set(back) == set(d_sd)
    for k, v in d_sd.items():
        assert torch.equal(back[k], v), k

    # Our inverse gives the same, and the original keys are exactly what the model defines.
    label_emb_as = "add_embedding" if name == "sdxl" else "class_embedding"
    inv = dl.unet_original_to_diffusers(orig, label_emb_as=label_emb_as)
    assert set(inv) == set(d_sd)
    assert all(torch.equal(inv[k], v) for k, v in d_sd.items())


VAE_CONFIG = dict(
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)


def test_ckpt_vae_mapping_matches_diffusers_conversion() -> None:
    vae = diffusers.AutoencoderKL(**VAE_CONFIG)
    d_sd = _randomise(vae, seed=2)
    orig = dl.vae_diffusers_to_original(d_sd)
    # The original AttnBlock uses 1x1 convolutions, so its q/k/v/proj_out weights are 4-d.
    assert orig["encoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)
    assert orig["decoder.mid.attn_1.proj_out.weight"].shape == (32, 32, 1, 1)
    # Decoder levels are numbered in reverse in the original layout; level 0 of diffusers
    # (lowest resolution) is up.1 here and carries the upsampler.
    assert "decoder.up.1.upsample.conv.weight" in orig and "decoder.up.0.upsample.conv.weight" not in orig
    assert "encoder.down.0.downsample.conv.weight" in orig
    assert "encoder.down.1.block.0.nin_shortcut.weight" in orig

    back = sfu.convert_ldm_vae_checkpoint(dl.add_prefix(orig, "first_stage_model."), vae.config)
    assert set(back) == set(d_sd)
    for k, v in d_sd.items():
        assert torch.equal(back[k], v), k

    inv = dl.vae_original_to_diffusers(orig)
    assert set(inv) == set(d_sd)
    assert all(torch.equal(inv[k], v) for k, v in d_sd.items())


def test_ckpt_vae_mapping_accepts_legacy_attention_names() -> None:
    vae = diffusers.AutoencoderKL(**VAE_CONFIG)
    d_sd = _randomise(vae, seed=3)
    legacy = {
        k.replace("to_q.", "query.")
        .replace("to_k.", "key.")
        .replace("to_v.", "value.")
        .replace("to_out.0.", "proj_attn."): v
        for k, v in d_sd.items()
    }
    assert legacy.keys() != d_sd.keys()
    assert dl.vae_diffusers_to_original(legacy).keys() == dl.vae_diffusers_to_original(d_sd).keys()


def test_ckpt_openclip_mapping_matches_diffusers_conversion() -> None:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=24,
        hidden_act="gelu",
    )
    model = CLIPTextModelWithProjection(cfg)
    hf = {k: v for k, v in _randomise(model, seed=4).items() if not k.endswith("position_ids")}
    oc = ct.hf_to_openclip(hf)
    assert oc["transformer.resblocks.1.attn.in_proj_weight"].shape == (96, 32)
    assert oc["text_projection"].shape == (32, 24)  # (width, proj): applied as x @ P
    assert oc["positional_embedding"].shape == (77, 32)

    prefix = "conditioner.embedders.1.model."
    back = sfu.convert_open_clip_checkpoint(model, dl.add_prefix(oc, prefix), prefix=prefix)
    assert set(back) == set(hf)
    for k, v in hf.items():
        assert torch.equal(back[k], v), k

    inv = ct.openclip_to_hf({**oc, "logit_scale": torch.tensor(1.0)})
    assert set(inv) == set(hf)
    assert all(torch.equal(inv[k], v) for k, v in hf.items())


def test_ckpt_unet_mapping_rejects_foreign_keys() -> None:
    with pytest.raises(ValueError, match="do not fit the layout"):
        dl.unet_diffusers_to_original({"conv_in.weight": torch.zeros(1), "lora.up.weight": torch.zeros(1)})
