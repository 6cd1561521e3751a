"""Text encoders vs transformers models loaded through diffusers' own single-file conversion.

Tiny random weights are written in the original checkpoint layouts (CLIP-L in HF layout under
``cond_stage_model.transformer.`` / ``conditioner.embedders.0.transformer.``; OpenCLIP ViT-H/bigG under
``cond_stage_model.model.`` / ``conditioner.embedders.{0,1}.model.``). The reference models are built by
``diffusers.loaders.single_file_utils.create_diffusers_clip_model_from_ldm`` (which runs diffusers'
``convert_ldm_clip_checkpoint`` / ``convert_open_clip_checkpoint``) from a local config directory, so the test
also checks our key layout and our OpenCLIP conversion. Float32, max abs difference <= 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import diffusers  # noqa: F401
import pytest
import torch
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from engine.diffusion.checkpoints.clip_text import build_clip_text_model, build_openclip_text_model  # noqa: E402
from engine.diffusion.text.encoder import SDTextEncoder  # noqa: E402
from engine.diffusion.text.tokenizer import load_clip_tokenizer  # noqa: E402

pytestmark = [pytest.mark.parity, pytest.mark.slow]

VOCAB, BOS, EOS = 49408, 49406, 49407
LAYERS = 3
TOL = 1e-4
PROMPT = "a (photo:1.0) of a cat, highly detailed"  # weight 1.0: the same as unweighted text
PLAIN = "a photo of a cat, highly detailed"


def _rnd(g: torch.Generator, *shape: int, scale: float = 0.1) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def hf_clip_weights(width: int, mlp: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "text_model.embeddings.token_embedding.weight": _rnd(g, VOCAB, width),
        "text_model.embeddings.position_embedding.weight": _rnd(g, 77, width),
        "text_model.embeddings.position_ids": torch.arange(77)[None],  # as SD1 checkpoints carry it
        "text_model.final_layer_norm.weight": 1 + _rnd(g, width),
        "text_model.final_layer_norm.bias": _rnd(g, width),
    }
    for i in range(LAYERS):
        p = f"text_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{name}.weight"] = _rnd(g, width, width, scale=0.2)
            sd[p + f"self_attn.{name}.bias"] = _rnd(g, width)
        for name in ("layer_norm1", "layer_norm2"):
            sd[p + f"{name}.weight"] = 1 + _rnd(g, width)
            sd[p + f"{name}.bias"] = _rnd(g, width)
        sd[p + "mlp.fc1.weight"] = _rnd(g, mlp, width, scale=0.2)
        sd[p + "mlp.fc1.bias"] = _rnd(g, mlp)
        sd[p + "mlp.fc2.weight"] = _rnd(g, width, mlp, scale=0.2)
        sd[p + "mlp.fc2.bias"] = _rnd(g, width)
    return sd


def openclip_weights(width: int, mlp: int, proj: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "token_embedding.weight": _rnd(g, VOCAB, width),
        "positional_embedding": _rnd(g, 77, width),
        "ln_final.weight": 1 + _rnd(g, width),
        "ln_final.bias": _rnd(g, width),
        "text_projection": _rnd(g, width, proj),
    }
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        sd.update(
            {
                p + "ln_1.weight": 1 + _rnd(g, width),
                p + "ln_1.bias": _rnd(g, width),
                p + "attn.in_proj_weight": _rnd(g, 3 * width, width, scale=0.2),
                p + "attn.in_proj_bias": _rnd(g, 3 * width),
                p + "attn.out_proj.weight": _rnd(g, width, width, scale=0.2),
                p + "attn.out_proj.bias": _rnd(g, width),
                p + "ln_2.weight": 1 + _rnd(g, width),
                p + "ln_2.bias": _rnd(g, width),
                p + "mlp.c_fc.weight": _rnd(g, mlp, width, scale=0.2),
                p + "mlp.c_fc.bias": _rnd(g, mlp),
                p + "mlp.c_proj.weight": _rnd(g, width, mlp, scale=0.2),
                p + "mlp.c_proj.bias": _rnd(g, width),
            }
        )
    return sd


def prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def stripped(prefix: str, checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}


def reference(cls, checkpoint, tmp_path: Path, name: str, *, width: int, mlp: int, act: str, proj: int = 0):
    """diffusers' conversion of the single-file checkpoint into a transformers model (offline config)."""
    config = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=LAYERS,
        num_attention_heads=width // 64,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=proj or width,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=1,
    )
    config_dir = tmp_path / name
    config.save_pretrained(config_dir)
    model = create_diffusers_clip_model_from_ldm(
        cls, checkpoint, config=str(config_dir), local_files_only=True, torch_dtype=torch.float32
    )
    model.config._attn_implementation = "eager"  # a different attention kernel than ours (sdpa)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


def ids(tok, pad: int) -> torch.Tensor:
    tokens = tok(PLAIN)["input_ids"]
    return torch.tensor([tokens + [pad] * (77 - len(tokens))])


@torch.no_grad()
def run(model, input_ids):
    return model(input_ids=input_ids, output_hidden_states=True)


def core(model):
    return getattr(model, "text_model", model)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().float() - b.detach().float()).abs().max())


def test_sd1_clip_l(tok, tmp_path: Path) -> None:
    checkpoint = prefixed("cond_stage_model.transformer.", hf_clip_weights(64, 128, seed=10))
    ref = reference(CLIPTextModel, checkpoint, tmp_path, "sd1", width=64, mlp=128, act="quick_gelu")
    ours = build_clip_text_model(stripped("cond_stage_model.transformer.", checkpoint), dtype=torch.float32)
    enc = SDTextEncoder.for_sd1(ours, tokenizer=tok)
    out = run(ref, ids(tok, EOS))
    cond, pooled = enc.encode(PROMPT)
    assert pooled is None
    assert maxdiff(cond, out.last_hidden_state) <= TOL
    skip2, _ = enc.encode(PROMPT, clip_skip=2)
    assert maxdiff(skip2, core(ref).final_layer_norm(out.hidden_states[-2])) <= TOL


def test_sd2_openclip_h(tok, tmp_path: Path) -> None:
    prefix = "cond_stage_model.model."
    checkpoint = prefixed(prefix, openclip_weights(128, 256, 64, seed=11))
    ref = reference(CLIPTextModel, checkpoint, tmp_path, "sd2", width=128, mlp=256, act="gelu")
    ours = build_openclip_text_model(stripped(prefix, checkpoint), dtype=torch.float32)
    cond, pooled = SDTextEncoder.for_sd2(ours, tokenizer=tok).encode(PROMPT)
    out = run(ref, ids(tok, 0))
    assert pooled is None
    assert maxdiff(cond, core(ref).final_layer_norm(out.hidden_states[-2])) <= TOL


def test_sdxl_clip_l_and_bigg(tok, tmp_path: Path) -> None:
    l_prefix, g_prefix = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
    checkpoint = {
        **prefixed(l_prefix, hf_clip_weights(64, 128, seed=12)),
        **prefixed(g_prefix, openclip_weights(128, 256, 96, seed=13)),
    }
    ref_l = reference(CLIPTextModel, checkpoint, tmp_path, "xl_l", width=64, mlp=128, act="quick_gelu")
    ref_g = reference(
        CLIPTextModelWithProjection, checkpoint, tmp_path, "xl_g", width=128, mlp=256, act="gelu", proj=96
    )
    enc = SDTextEncoder.for_sdxl(
        build_clip_text_model(stripped(l_prefix, checkpoint)),
        build_openclip_text_model(stripped(g_prefix, checkpoint)),
        tokenizer=tok,
    )
    cond, pooled = enc.encode(PROMPT)
    assert cond.shape == (1, 77, 64 + 128) and pooled is not None and pooled.shape == (1, 96)
    out_l, out_g = run(ref_l, ids(tok, EOS)), run(ref_g, ids(tok, 0))
    expected = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
    assert maxdiff(cond, expected) <= TOL
    assert maxdiff(pooled, out_g.text_embeds) <= TOL


def test_sdxl_refiner_bigg(tok, tmp_path: Path) -> None:
    prefix = "conditioner.embedders.0.model."
    checkpoint = prefixed(prefix, openclip_weights(128, 256, 96, seed=14))
    ref = reference(
        CLIPTextModelWithProjection, checkpoint, tmp_path, "refiner", width=128, mlp=256, act="gelu", proj=96
    )
    cond, pooled = SDTextEncoder.for_sdxl_refiner(
        build_openclip_text_model(stripped(prefix, checkpoint)), tokenizer=tok
    ).encode(PROMPT)
    out = run(ref, ids(tok, 0))
    assert cond.shape == (1, 77, 128) and pooled is not None
    assert maxdiff(cond, out.hidden_states[-2]) <= TOL
    assert maxdiff(pooled, out.text_embeds) <= TOL
