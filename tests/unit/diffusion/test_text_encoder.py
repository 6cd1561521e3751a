"""SDTextEncoder: per-family hidden states, clip skip, weighting, long prompts, embeddings.

The towers are tiny random CLIP models built through our loaders; the expected values come from the
transformers forward pass of the same model (``output_hidden_states``), an independent code path from
the encoder's own layer loop.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints.clip_text import (
    build_clip_text_model,
    build_clip_text_model_with_projection,
)
from engine.diffusion.text.embeddings import EmbeddingError, EmbeddingLibrary
from engine.diffusion.text.encoder import SDTextEncoder
from engine.diffusion.text.tokenizer import load_clip_tokenizer

BOS, EOS, VOCAB = 49406, 49407, 49408
L_WIDTH, G_WIDTH, G_PROJ = 32, 64, 40


def random_hf_sd(width: int, *, layers: int = 3, mlp: int = 48, proj: int | None = None, seed: int = 0):
    """HF-layout CLIP text weights with every tensor random (LN weights around 1)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "text_model.embeddings.token_embedding.weight": rnd(VOCAB, width),
        "text_model.embeddings.position_embedding.weight": rnd(77, width),
        "text_model.final_layer_norm.weight": 1 + rnd(width),
        "text_model.final_layer_norm.bias": rnd(width),
    }
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{name}.weight"] = rnd(width, width, scale=0.3)
            sd[p + f"self_attn.{name}.bias"] = rnd(width)
        for name in ("layer_norm1", "layer_norm2"):
            sd[p + f"{name}.weight"] = 1 + rnd(width)
            sd[p + f"{name}.bias"] = rnd(width)
        sd[p + "mlp.fc1.weight"] = rnd(mlp, width, scale=0.3)
        sd[p + "mlp.fc1.bias"] = rnd(mlp)
        sd[p + "mlp.fc2.weight"] = rnd(width, mlp, scale=0.3)
        sd[p + "mlp.fc2.bias"] = rnd(width)
    if proj is not None:
        sd["text_projection.weight"] = rnd(proj, width)
    return sd


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def clip_l():
    return build_clip_text_model(random_hf_sd(L_WIDTH, seed=1))


@pytest.fixture(scope="module")
def clip_g():
    return build_clip_text_model_with_projection(
        random_hf_sd(G_WIDTH, proj=G_PROJ, seed=2), hidden_act="gelu"
    )


def ids_for(tok, text: str, pad: int) -> torch.Tensor:
    ids = tok(text)["input_ids"]
    return torch.tensor([ids + [pad] * (77 - len(ids))])


def core(model):
    return getattr(model, "text_model", model)


@torch.no_grad()
def reference(model, ids: torch.Tensor):
    """transformers' own forward: (hidden_states tuple, last_hidden_state, text_embeds or None)."""
    out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states, out.last_hidden_state, getattr(out, "text_embeds", None)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=atol, rtol=0)


PROMPT = "a photo of a cat"


def test_sd1_is_last_hidden_state(tok, clip_l) -> None:
    enc = SDTextEncoder.for_sd1(clip_l, tokenizer=tok)
    cond, pooled = enc.encode(PROMPT)
    assert cond.shape == (1, 77, L_WIDTH) and cond.dtype == torch.float32 and pooled is None
    assert enc.context_dim == L_WIDTH and enc.pooled_dim is None
    _, last, _ = reference(clip_l, ids_for(tok, PROMPT, EOS))  # SD1 pads with EOS
    assert close(cond, last)


def test_sd1_clip_skip(tok, clip_l) -> None:
    enc = SDTextEncoder.for_sd1(clip_l, tokenizer=tok)
    hidden, last, _ = reference(clip_l, ids_for(tok, PROMPT, EOS))
    skip2, _ = enc.encode(PROMPT, clip_skip=2)
    # ComfyUI CLIPSetLastLayer(-2) on SD1: penultimate layer output, then the final layer norm.
    expected = core(clip_l).final_layer_norm(hidden[-2])
    assert close(skip2, expected)
    assert not close(skip2, last, atol=1e-2)
    assert torch.equal(enc.encode(PROMPT, clip_skip=-2)[0], skip2)  # ComfyUI's sign convention too
    assert close(enc.encode(PROMPT, clip_skip=3)[0], core(clip_l).final_layer_norm(hidden[-3]))
    assert torch.equal(enc.encode(PROMPT, clip_skip=1)[0], enc.encode(PROMPT)[0])
    # Deeper than the tower: ComfyUI falls back to the normal output.
    assert close(enc.encode(PROMPT, clip_skip=12)[0], last)
    with pytest.raises(ValueError, match="clip_skip"):
        enc.encode(PROMPT, clip_skip=0)


def test_sd2_penultimate_with_final_norm(tok, clip_g) -> None:
    # An OpenCLIP-style tower stands in for ViT-H (the encoder only cares about the layout).
    enc = SDTextEncoder.for_sd2(clip_g, tokenizer=tok)
    cond, pooled = enc.encode(PROMPT)
    assert pooled is None and cond.shape == (1, 77, G_WIDTH)
    hidden, last, _ = reference(clip_g, ids_for(tok, PROMPT, 0))  # SD2 pads with 0
    assert close(cond, core(clip_g).final_layer_norm(hidden[-2]))
    assert close(enc.encode(PROMPT, clip_skip=1)[0], last)


def test_sdxl_concat_and_pooled(tok, clip_l, clip_g) -> None:
    enc = SDTextEncoder.for_sdxl(clip_l, clip_g, tokenizer=tok)
    cond, pooled = enc.encode(PROMPT)
    assert cond.shape == (1, 77, L_WIDTH + G_WIDTH) and pooled is not None and pooled.shape == (1, G_PROJ)
    assert enc.context_dim == L_WIDTH + G_WIDTH and enc.pooled_dim == G_PROJ
    l_hidden, _, _ = reference(clip_l, ids_for(tok, PROMPT, EOS))
    g_hidden, _, g_pooled = reference(clip_g, ids_for(tok, PROMPT, 0))
    assert close(cond[..., :L_WIDTH], l_hidden[-2])  # no final layer norm on SDXL hidden states
    assert close(cond[..., L_WIDTH:], g_hidden[-2])
    assert close(pooled, g_pooled)
    skip1, pooled1 = enc.encode(PROMPT, clip_skip=1)
    assert close(skip1[..., L_WIDTH:], g_hidden[-1])  # last layer, still without the final norm
    assert torch.equal(pooled1, pooled)  # the pooled output always comes from the final layer


def test_sdxl_refiner(tok, clip_g) -> None:
    enc = SDTextEncoder.for_sdxl_refiner(clip_g, tokenizer=tok)
    cond, pooled = enc.encode(PROMPT)
    g_hidden, _, g_pooled = reference(clip_g, ids_for(tok, PROMPT, 0))
    assert close(cond, g_hidden[-2]) and pooled is not None and close(pooled, g_pooled)


def test_sd1_needs_no_projection_but_pooled_towers_do(tok, clip_l) -> None:
    with pytest.raises(ValueError, match="text projection"):
        SDTextEncoder.for_sdxl_refiner(clip_l, tokenizer=tok)


def test_weight_one_is_unweighted(tok, clip_l, clip_g) -> None:
    enc = SDTextEncoder.for_sdxl(clip_l, clip_g, tokenizer=tok)
    plain = enc.encode("a cat")
    same = enc.encode("a (cat:1.0)")
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])


def test_weight_moves_only_the_weighted_token(tok, clip_l) -> None:
    enc = SDTextEncoder.for_sd1(clip_l, tokenizer=tok)
    plain, _ = enc.encode("a cat sits")
    weighted, _ = enc.encode("a (cat:1.5) sits")
    changed = (plain != weighted).any(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [2]  # [BOS, a, cat, sits, EOS, ...]
    # ComfyUI: z' = z_empty + (z - z_empty) * w, z_empty from the empty prompt at the same position.
    _, z, _ = reference(clip_l, ids_for(tok, "a cat sits", EOS))
    _, z_empty, _ = reference(clip_l, torch.tensor([[BOS] + [EOS] * 76]))
    expected = z_empty[0, 2] + (z[0, 2] - z_empty[0, 2]) * 1.5
    assert close(weighted[0, 2], expected)


def test_weight_changes_sd2_rows_with_zero_padding(tok, clip_g) -> None:
    enc = SDTextEncoder.for_sd2(clip_g, tokenizer=tok)
    weighted, _ = enc.encode("(a cat:0.5)")
    hidden, _, _ = reference(clip_g, ids_for(tok, "a cat", 0))
    empty_hidden, _, _ = reference(clip_g, torch.tensor([[BOS, EOS] + [0] * 75]))
    norm = core(clip_g).final_layer_norm
    z, z_empty = norm(hidden[-2])[0], norm(empty_hidden[-2])[0]
    assert close(weighted[0, 1:3], z_empty[1:3] + (z[1:3] - z_empty[1:3]) * 0.5)
    assert close(weighted[0, 3:], z[3:])


def test_long_prompt_is_chunked(tok, clip_l, clip_g) -> None:
    prompt = ", ".join(["red cat"] * 31)
    tokens = tok(prompt)["input_ids"][1:-1]
    assert len(tokens) == 92
    enc = SDTextEncoder.for_sdxl(clip_l, clip_g, tokenizer=tok)
    cond, pooled = enc.encode(prompt)
    assert cond.shape == (1, 154, L_WIDTH + G_WIDTH)
    first = [BOS] + tokens[:75] + [EOS]
    second = [BOS] + tokens[75:] + [EOS]
    l0, _, _ = reference(clip_l, torch.tensor([first]))
    l1, _, _ = reference(clip_l, torch.tensor([second + [EOS] * (77 - len(second))]))
    g0, _, g_pooled0 = reference(clip_g, torch.tensor([first]))
    g1, _, _ = reference(clip_g, torch.tensor([second + [0] * (77 - len(second))]))
    assert close(cond[:, :77, :L_WIDTH], l0[-2]) and close(cond[:, 77:, :L_WIDTH], l1[-2])
    assert close(cond[:, :77, L_WIDTH:], g0[-2]) and close(cond[:, 77:, L_WIDTH:], g1[-2])
    assert close(pooled, g_pooled0)  # pooled output of the first chunk


def _extended(model, vectors: torch.Tensor):
    """The same model with extra vocabulary rows (how ComfyUI injects embeddings): independent reference."""
    ref = copy.deepcopy(model)
    table = core(ref).embeddings.token_embedding
    grown = torch.nn.Embedding(VOCAB + vectors.shape[0], table.weight.shape[1])
    grown.weight.data = torch.cat([table.weight.data, vectors])
    core(ref).embeddings.token_embedding = grown
    return ref


@pytest.fixture
def library(tmp_path: Path) -> EmbeddingLibrary:
    gen = torch.Generator().manual_seed(7)
    torch.save({"string_to_param": {"*": torch.randn(2, L_WIDTH, generator=gen)}}, tmp_path / "sd1emb.pt")
    save_file(
        {"clip_l": torch.randn(2, L_WIDTH, generator=gen), "clip_g": torch.randn(2, G_WIDTH, generator=gen)},
        str(tmp_path / "xlemb.safetensors"),
    )
    return EmbeddingLibrary(tmp_path)


def test_sd1_embedding_is_inserted_as_input_vectors(tok, clip_l, library) -> None:
    enc = SDTextEncoder.for_sd1(clip_l, tokenizer=tok)
    cond, _ = enc.encode("a embedding:sd1emb cat", embeddings=library)
    vectors = library.get("sd1emb").vectors_for("clip_l", L_WIDTH)
    ids = [BOS, 320, VOCAB, VOCAB + 1, 2368, EOS]
    _, expected, _ = reference(_extended(clip_l, vectors), torch.tensor([ids + [EOS] * 71]))
    assert close(cond, expected)
    # Without a library the reference is plain text.
    text_only, _ = enc.encode("a embedding:sd1emb cat")
    assert not close(text_only, cond, atol=1e-3)


def test_sdxl_embedding_uses_each_towers_vectors(tok, clip_l, clip_g, library) -> None:
    enc = SDTextEncoder.for_sdxl(clip_l, clip_g, tokenizer=tok)
    cond, pooled = enc.encode("embedding:xlemb cat", embeddings=library)
    emb = library.get("xlemb")
    ids = [BOS, VOCAB, VOCAB + 1, 2368, EOS]
    l_hidden, _, _ = reference(
        _extended(clip_l, emb.vectors_for("clip_l", L_WIDTH)), torch.tensor([ids + [EOS] * 72])
    )
    g_hidden, _, g_pooled = reference(
        _extended(clip_g, emb.vectors_for("clip_g", G_WIDTH)), torch.tensor([ids + [0] * 72])
    )
    assert close(cond[..., :L_WIDTH], l_hidden[-2]) and close(cond[..., L_WIDTH:], g_hidden[-2])
    assert close(pooled, g_pooled)


def test_embedding_problems(tok, clip_l, clip_g, library) -> None:
    enc = SDTextEncoder.for_sdxl(clip_l, clip_g, tokenizer=tok)
    # An SD1 embedding has no clip_g vectors: a clear error by default...
    with pytest.raises(EmbeddingError, match=r"sd1emb.*width 64.*clip_g"):
        enc.encode("a embedding:sd1emb cat", embeddings=library)
    with pytest.raises(EmbeddingError, match="'nope' not found"):
        enc.encode("a embedding:nope cat", embeddings=library)
    # ...or, with a warnings list, skipped like ComfyUI does.
    warnings: list[str] = []
    cond, pooled = enc.encode("a embedding:sd1emb embedding:nope cat", embeddings=library, warnings=warnings)
    assert len(warnings) == 2 and "sd1emb" in warnings[0] and "nope" in warnings[1]
    plain, plain_pooled = enc.encode("a cat")
    assert torch.equal(cond, plain) and torch.equal(pooled, plain_pooled)


def test_half_precision_towers(tok) -> None:
    sd = random_hf_sd(L_WIDTH, seed=1)
    full = SDTextEncoder.for_sd1(build_clip_text_model(sd), tokenizer=tok).encode(PROMPT)[0]
    half_model = build_clip_text_model(sd, dtype=torch.float16)
    half = SDTextEncoder.for_sd1(half_model, tokenizer=tok).encode(PROMPT)[0]
    assert half.dtype == torch.float32  # conditioning is returned in float32, as ComfyUI does
    assert close(half, full, atol=3e-2)


def test_sd2_tower_saved_without_its_last_layer(tok) -> None:
    # diffusers' SD2 text_encoder keeps 23 of ViT-H's 24 layers; its last layer is SD2's penultimate.
    full_sd = random_hf_sd(G_WIDTH, layers=3, seed=3)
    cut_sd = {k: v for k, v in full_sd.items() if ".layers.2." not in k}
    full = SDTextEncoder.for_sd2(build_clip_text_model(full_sd, hidden_act="gelu"), tokenizer=tok)
    cut = SDTextEncoder.for_sd2(
        build_clip_text_model(cut_sd, hidden_act="gelu"), tokenizer=tok, last_layer_removed=True
    )
    assert torch.equal(cut.encode(PROMPT)[0], full.encode(PROMPT)[0])
    assert torch.equal(cut.encode(PROMPT, clip_skip=3)[0], full.encode(PROMPT, clip_skip=3)[0])
    with pytest.raises(ValueError, match="without its last 1 layer"):
        cut.encode(PROMPT, clip_skip=1)
