"""Building transformers CLIP text models from HF- and OpenCLIP-layout state dicts, and the one
OpenCLIP <-> HF key conversion (checkpoints.clip_text)."""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.checkpoints.clip_text import (
    TextEncoderWeightsError,
    build_clip_text_model,
    build_openclip_text_model,
    clip_text_config_from_state_dict,
    hf_to_openclip,
    openclip_to_hf,
)

VOCAB = 49408


def openclip_text_sd(width: int = 64, layers: int = 2, mlp: int = 96, proj: int = 48, seed: int = 0):
    """Random OpenCLIP-layout text tower, written key by key (independent of the code under test)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "token_embedding.weight": rnd(VOCAB, width),
        "positional_embedding": rnd(77, width),
        "ln_final.weight": 1 + rnd(width),
        "ln_final.bias": rnd(width),
        "text_projection": rnd(width, proj),
        "logit_scale": torch.tensor(4.6),
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update(
            {
                p + "ln_1.weight": 1 + rnd(width),
                p + "ln_1.bias": rnd(width),
                p + "attn.in_proj_weight": rnd(3 * width, width),
                p + "attn.in_proj_bias": rnd(3 * width),
                p + "attn.out_proj.weight": rnd(width, width),
                p + "attn.out_proj.bias": rnd(width),
                p + "ln_2.weight": 1 + rnd(width),
                p + "ln_2.bias": rnd(width),
                p + "mlp.c_fc.weight": rnd(mlp, width),
                p + "mlp.c_fc.bias": rnd(mlp),
                p + "mlp.c_proj.weight": rnd(width, mlp),
                p + "mlp.c_proj.bias": rnd(width),
            }
        )
    return sd


def test_openclip_to_hf_mapping() -> None:
    sd = openclip_text_sd(width=64)
    hf = openclip_to_hf(sd)
    in_proj = sd["transformer.resblocks.1.attn.in_proj_weight"]
    layer = "text_model.encoder.layers.1."
    assert torch.equal(hf[layer + "self_attn.q_proj.weight"], in_proj[:64])
    assert torch.equal(hf[layer + "self_attn.k_proj.weight"], in_proj[64:128])
    assert torch.equal(hf[layer + "self_attn.v_proj.weight"], in_proj[128:])
    bias = sd["transformer.resblocks.1.attn.in_proj_bias"]
    assert torch.equal(hf[layer + "self_attn.v_proj.bias"], bias[128:])
    assert torch.equal(hf[layer + "layer_norm2.weight"], sd["transformer.resblocks.1.ln_2.weight"])
    assert torch.equal(hf[layer + "mlp.fc1.weight"], sd["transformer.resblocks.1.mlp.c_fc.weight"])
    assert torch.equal(hf[layer + "mlp.fc2.bias"], sd["transformer.resblocks.1.mlp.c_proj.bias"])
    assert torch.equal(hf["text_projection.weight"], sd["text_projection"].T)
    assert torch.equal(hf["text_model.embeddings.position_embedding.weight"], sd["positional_embedding"])
    assert torch.equal(hf["text_model.final_layer_norm.bias"], sd["ln_final.bias"])
    assert "logit_scale" not in hf and not any("resblocks" in k for k in hf)
    # q/k/v are views of the stacked tensor: no copy of the weights.
    assert (
        hf[layer + "self_attn.k_proj.weight"].untyped_storage().data_ptr()
        == in_proj.untyped_storage().data_ptr()
    )


def test_openclip_layout_round_trips_through_hf() -> None:
    """hf_to_openclip inverts openclip_to_hf (single files <-> diffusers folders use the same pair)."""
    sd = openclip_text_sd(width=64, layers=3)
    back = hf_to_openclip(openclip_to_hf(sd))
    assert back.keys() == sd.keys() - {"logit_scale"}
    assert all(torch.equal(back[k], sd[k]) for k in back)
    hf = openclip_to_hf(sd)
    with pytest.raises(TextEncoderWeightsError, match="lacks some of q/k/v_proj.bias"):
        hf_to_openclip({k: v for k, v in hf.items() if not k.endswith("layers.2.self_attn.q_proj.bias")})
    with pytest.raises(TextEncoderWeightsError, match="unexpected key 'text_model.pooler.weight'"):
        hf_to_openclip({**hf, "text_model.pooler.weight": torch.zeros(1)})


def test_openclip_unknown_key_is_reported() -> None:
    sd = openclip_text_sd()
    sd["model.token_embedding.weight"] = sd.pop("token_embedding.weight")  # prefix not removed
    with pytest.raises(TextEncoderWeightsError, match="model.token_embedding.weight"):
        openclip_to_hf(sd)


def test_config_inferred_from_shapes() -> None:
    hf = openclip_to_hf(openclip_text_sd(width=128, layers=3, mlp=200, proj=40))
    cfg = clip_text_config_from_state_dict(hf, hidden_act="gelu")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (128, 3, 200)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.projection_dim) == (VOCAB, 77, 40)
    assert cfg.num_attention_heads == 2  # 64-dim heads
    assert cfg.hidden_act == "gelu" and cfg.eos_token_id == 49407


def test_openclip_model_weights_are_the_checkpoint_tensors() -> None:
    sd = openclip_text_sd(width=64)
    model = build_openclip_text_model(sd, dtype=torch.float32)
    tm = model.text_model
    assert model.config.hidden_act == "gelu"
    # assign=True: the parameters *are* the given tensors (no random init, no copy).
    assert tm.embeddings.token_embedding.weight.data_ptr() == sd["token_embedding.weight"].data_ptr()
    assert torch.equal(model.text_projection.weight, sd["text_projection"].T)
    assert torch.equal(tm.embeddings.position_ids, torch.arange(77)[None])
    assert not any(p.requires_grad for p in model.parameters())
    half = build_openclip_text_model(sd, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert torch.equal(half.text_model.final_layer_norm.weight, sd["ln_final.weight"].half())


def test_hf_layout_clip_l_with_corrupt_position_ids() -> None:
    hf = openclip_to_hf(openclip_text_sd(width=64))
    del hf["text_projection.weight"]
    # Some SD1 checkpoints carry a float, slightly-off copy of this buffer; it must be ignored.
    hf["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.float32)[None] + 0.3
    model = build_clip_text_model(hf, dtype=torch.float32)
    assert model.config.hidden_act == "quick_gelu"
    emb = getattr(model, "text_model", model).embeddings
    assert emb.position_ids.dtype == torch.long and torch.equal(emb.position_ids, torch.arange(77)[None])
    out = model(input_ids=torch.tensor([[49406, 320, 49407]]))
    assert torch.isfinite(out.last_hidden_state).all()


def test_missing_layer_key_is_reported() -> None:
    hf = openclip_to_hf(openclip_text_sd(width=64))
    del hf["text_model.encoder.layers.1.mlp.fc2.weight"]
    with pytest.raises(TextEncoderWeightsError, match=r"layers\.1\.mlp\.fc2\.weight"):
        build_clip_text_model(hf)


def test_missing_text_projection_becomes_identity() -> None:
    sd = openclip_text_sd(width=64)
    del sd["text_projection"]
    model = build_openclip_text_model(sd)
    assert torch.equal(model.text_projection.weight, torch.eye(64))
