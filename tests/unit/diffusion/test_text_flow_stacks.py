"""SD3's triple and Flux's dual text-encoder stacks and the T5 prompt path, on tiny random models.

References: diffusers' ``StableDiffusion3Pipeline.encode_prompt`` and ``FluxPipeline.encode_prompt`` run
on the same tiny transformers models and tokenizers (transformers' ``T5TokenizerFast`` converted from the
same SentencePiece file), and transformers' ``T5EncoderModel`` for the T5 path -- code independent of ours.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from engine.diffusion.checkpoints.clip_text import build_clip_text_model
from engine.diffusion.text.flux_stack import FluxTextStack
from engine.diffusion.text.sd3_stack import SD3TextDims, SD3TextStack
from engine.diffusion.text.t5_encoder import T5TextEncoder
from engine.diffusion.text.t5_tokenizer import load_t5_tokenizer
from engine.diffusion.text.tokenizer import load_clip_tokenizer
from tests.factories.checkpoints import clip_text_shapes, random_state_dict
from tests.unit.diffusion.t5_fixtures import T5_TINY, clip_tower, hf_t5_encoder, our_t5, train_spiece

L_WIDTH, G_WIDTH, G_PROJ = 32, 48, 40
DIMS = SD3TextDims(clip_l=L_WIDTH, clip_g=G_WIDTH, clip_g_pooled=G_PROJ, context=T5_TINY.d_model)
LONG_PROMPT = ", ".join(["a photo of a cat sitting on a red chair"] * 12)  # > 77 CLIP and > 256 T5 tokens


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("t5vocab")
    train_spiece(folder / "spiece.model")
    from transformers import T5TokenizerFast

    l_sd = random_state_dict(clip_text_shapes(L_WIDTH, 2, projection=L_WIDTH), seed=1)
    return {
        "folder": folder,
        "clip_tok": load_clip_tokenizer(),
        "t5_tok": load_t5_tokenizer(folder),
        "hf_t5_tok": T5TokenizerFast.from_pretrained(str(folder)),
        "l_sd": l_sd,
        "clip_l": clip_tower(L_WIDTH, projection=L_WIDTH, hidden_act="quick_gelu", seed=1),
        "clip_g": clip_tower(G_WIDTH, projection=G_PROJ, hidden_act="gelu", seed=2),
        "hf_t5": hf_t5_encoder(3),
    }


def sd3_stack(
    parts: dict, *, clip_l: bool = True, clip_g: bool = True, t5: bool = True, **kw
) -> SD3TextStack:
    return SD3TextStack(
        parts["clip_l"] if clip_l else None,
        parts["clip_g"] if clip_g else None,
        our_t5(parts["hf_t5"]) if t5 else None,
        clip_tokenizer=parts["clip_tok"],
        t5_tokenizer=parts["t5_tok"],
        dims=DIMS,
        **kw,
    )


# ---- T5 ----------------------------------------------------------------------------------------------------


def test_t5_rows_end_with_eos_pad_to_min_length_and_are_never_truncated(parts: dict) -> None:
    enc = T5TextEncoder(our_t5(parts["hf_t5"]), parts["t5_tok"], min_length=77)
    ids = parts["hf_t5_tok"]("a photo of a cat")["input_ids"]  # ends with </s>
    row = enc.tokenize("a photo of a cat")
    assert [t for t, _ in row] == ids + [0] * (77 - len(ids))
    assert all(w == 1.0 for _, w in row)
    long_ids = parts["hf_t5_tok"](LONG_PROMPT)["input_ids"]
    assert len(long_ids) > 256
    assert [t for t, _ in enc.tokenize(LONG_PROMPT)] == long_ids
    weighted = enc.tokenize("a (red:1.5) cat")
    pieces = [parts["t5_tok"].encode(text)[:-1] for text in ("a ", "red", " cat")]  # tokenized apart
    assert weighted[: sum(map(len, pieces)) + 1] == [
        *[(t, 1.0) for t in pieces[0]],
        *[(t, 1.5) for t in pieces[1]],
        *[(t, 1.0) for t in pieces[2]],
        (1, 1.0),
    ]


def test_t5_drops_embedding_references_only_when_embeddings_are_in_use(parts: dict) -> None:
    enc = T5TextEncoder(our_t5(parts["hf_t5"]), parts["t5_tok"], min_length=1)
    tok = parts["t5_tok"]
    dropped = [t for t, _ in enc.tokenize("a embedding:style cat", drop_embeddings=True)]
    assert dropped == tok.encode("a")[:-1] + tok.encode("cat")
    kept = [t for t, _ in enc.tokenize("a embedding:style cat")]
    assert kept == tok.encode("a")[:-1] + tok.encode("embedding:style cat")


def test_t5_hidden_states_match_transformers(parts: dict) -> None:
    hf = parts["hf_t5"]
    ids = parts["hf_t5_tok"]("a painting of a dog in the snow", padding="max_length", max_length=77)
    input_ids = torch.tensor([ids["input_ids"]])
    for masked in (False, True):
        enc = T5TextEncoder(our_t5(hf), parts["t5_tok"], min_length=77, attention_mask=masked)
        z, mask = enc.encode("a painting of a dog in the snow")
        assert mask.tolist() == [ids["attention_mask"]]
        with torch.no_grad():
            ref = hf(input_ids, attention_mask=mask if masked else None).last_hidden_state
        assert z.shape == (1, 77, T5_TINY.d_model)
        torch.testing.assert_close(z, ref, atol=1e-5, rtol=1e-5)


def test_t5_weighting_moves_weighted_tokens_from_the_empty_prompt(parts: dict) -> None:
    hf, tok = parts["hf_t5"], parts["t5_tok"]
    enc = T5TextEncoder(our_t5(hf), tok, min_length=77)
    z, _ = enc.encode("a (red:1.5) dog")
    row = enc.tokenize("a (red:1.5) dog")
    ids = torch.tensor([[t for t, _ in row]])
    empty = torch.tensor([[1] + [0] * 76])
    with torch.no_grad():
        plain, z_empty = hf(ids).last_hidden_state, hf(empty).last_hidden_state
    w = torch.tensor([w for _, w in row])[None, :, None]
    expected = torch.where(w != 1.0, z_empty + (plain - z_empty) * w, plain)
    assert (w == 1.5).sum() > 0
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)


def test_t5_clip_skip_takes_an_earlier_block_then_the_final_norm(parts: dict) -> None:
    hf = parts["hf_t5"]
    enc = T5TextEncoder(our_t5(hf), parts["t5_tok"], min_length=77)
    ids = torch.tensor([[t for t, _ in enc.tokenize("a dog in the snow")]])
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        penultimate = hf.encoder.final_layer_norm(out.hidden_states[-2])  # input of the last block
    torch.testing.assert_close(
        enc.encode("a dog in the snow", clip_skip=2)[0], penultimate, atol=1e-5, rtol=1e-5
    )
    last = out.last_hidden_state
    for skip in (None, 1, -1, T5_TINY.num_layers + 1):  # ComfyUI: beyond the depth means the last layer
        torch.testing.assert_close(
            enc.encode("a dog in the snow", clip_skip=skip)[0], last, atol=1e-5, rtol=1e-5
        )
    assert not torch.allclose(penultimate, last, atol=1e-3)


# ---- SD3 ---------------------------------------------------------------------------------------------------


def _diffusers_sd3(parts: dict, clip_l):
    from diffusers import StableDiffusion3Pipeline

    tokenizer_2 = copy.deepcopy(parts["clip_tok"])
    tokenizer_2.pad_token = "!"  # OpenCLIP pads with id 0, as SD3's tokenizer_2 does
    return StableDiffusion3Pipeline(
        transformer=None,
        scheduler=None,
        vae=None,
        text_encoder=clip_l,
        tokenizer=parts["clip_tok"],
        text_encoder_2=parts["clip_g"],
        tokenizer_2=tokenizer_2,
        text_encoder_3=parts["hf_t5"],
        tokenizer_3=parts["hf_t5_tok"],
    )


@pytest.mark.parametrize("prompt", ["a photo of a cat", "a red dog in the snow, 4k", ""])
def test_sd3_matches_diffusers_encode_prompt(parts: dict, prompt: str) -> None:
    # diffusers pools CLIP-L through its projection, ComfyUI (and SD3's reference code) does not: give
    # CLIP-L an identity projection so that both agree, the test below checks the unprojected rule.
    clip_l = copy.deepcopy(parts["clip_l"])
    with torch.no_grad():
        clip_l.text_projection.weight.copy_(torch.eye(L_WIDTH))
    stack = SD3TextStack(
        clip_l,
        parts["clip_g"],
        our_t5(parts["hf_t5"]),
        clip_tokenizer=parts["clip_tok"],
        t5_tokenizer=parts["t5_tok"],
        dims=DIMS,
    )
    ours = stack.encode(prompt)
    cond, _, pooled, _ = _diffusers_sd3(parts, clip_l).encode_prompt(
        prompt, prompt, prompt, device="cpu", do_classifier_free_guidance=False, max_sequence_length=77
    )
    assert ours.cond.shape == (1, 77 + 77, T5_TINY.d_model)
    assert ours.pooled.shape == (1, L_WIDTH + G_PROJ)
    torch.testing.assert_close(ours.cond, cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pooled, pooled, atol=1e-5, rtol=1e-5)
    assert ours.extra == {}


def test_sd3_pools_clip_l_without_its_projection(parts: dict) -> None:
    ours = sd3_stack(parts, t5=False).encode("a photo of a cat")
    ids = parts["clip_tok"]("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = parts["clip_l"](ids["input_ids"])
    eos = ids["input_ids"][0].tolist().index(49407)
    unprojected = out.last_hidden_state[:, eos]  # transformers applies the final layer norm there
    torch.testing.assert_close(ours.pooled[:, :L_WIDTH], unprojected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours.pooled[:, :L_WIDTH], out.text_embeds, atol=1e-3)


def test_sd3_missing_encoders_are_zeros_as_in_comfyui(parts: dict) -> None:
    prompt = "a photo of a cat"
    full = sd3_stack(parts).encode(prompt)
    no_l = sd3_stack(parts, clip_l=False).encode(prompt)
    no_g = sd3_stack(parts, clip_g=False).encode(prompt)
    no_t5 = sd3_stack(parts, t5=False).encode(prompt)
    t5_only = sd3_stack(parts, clip_l=False, clip_g=False).encode(prompt)
    nothing = sd3_stack(parts, clip_l=False, clip_g=False, t5=False).encode(prompt)
    lg = L_WIDTH + G_WIDTH
    # CLIP-G's features keep their place after CLIP-L's (zero) slot; pooled CLIP-L slot is zero
    assert no_l.cond.shape == full.cond.shape == (1, 154, T5_TINY.d_model)
    assert torch.all(no_l.cond[:, :77, :L_WIDTH] == 0) and torch.all(no_l.cond[:, :77, lg:] == 0)
    torch.testing.assert_close(no_l.cond[:, :77, L_WIDTH:lg], full.cond[:, :77, L_WIDTH:lg])
    assert torch.all(no_l.pooled[:, :L_WIDTH] == 0)
    torch.testing.assert_close(no_l.pooled[:, L_WIDTH:], full.pooled[:, L_WIDTH:])
    # without CLIP-G: its features and pooled entries are zeros
    assert torch.all(no_g.cond[:, :77, L_WIDTH:] == 0)
    torch.testing.assert_close(no_g.cond[:, :77, :L_WIDTH], full.cond[:, :77, :L_WIDTH])
    assert torch.all(no_g.pooled[:, L_WIDTH:] == 0)
    # without T5: the CLIP part alone; with T5 alone: T5's rows alone, pooled zeros
    torch.testing.assert_close(no_t5.cond, full.cond[:, :77])
    torch.testing.assert_close(no_t5.pooled, full.pooled)
    torch.testing.assert_close(t5_only.cond, full.cond[:, 77:])
    assert t5_only.pooled.shape == (1, L_WIDTH + G_PROJ) and torch.all(t5_only.pooled == 0)
    assert nothing.cond.shape == (1, 77, T5_TINY.d_model) and torch.all(nothing.cond == 0)
    assert torch.all(nothing.pooled == 0)


def test_sd3_long_prompts_and_the_t5_attention_mask(parts: dict) -> None:
    out = sd3_stack(parts, t5_attention_mask=True).encode(LONG_PROMPT)
    t5_tokens = len(parts["hf_t5_tok"](LONG_PROMPT)["input_ids"])
    assert out.cond.shape == (1, 77 * 2 + t5_tokens, T5_TINY.d_model)  # two CLIP chunks + all of T5
    assert out.extra["attention_mask"].tolist() == [[1] * t5_tokens]
    short = sd3_stack(parts, t5_attention_mask=True).encode("a cat")
    n = len(parts["hf_t5_tok"]("a cat")["input_ids"])
    assert short.extra["attention_mask"].tolist() == [[1] * n + [0] * (77 - n)]


def test_sd3_rejects_towers_that_do_not_fit_the_dims(parts: dict) -> None:
    with pytest.raises(ValueError, match="clip_g size is 48, expected 1280"):
        SD3TextStack(None, parts["clip_g"], None, clip_tokenizer=parts["clip_tok"])
    with pytest.raises(ValueError, match="needs the T5 tokenizer"):
        SD3TextStack(None, None, our_t5(parts["hf_t5"]), dims=DIMS)


# ---- Flux --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["a photo of a cat", "an astronaut riding a horse on the moon"])
def test_flux_matches_diffusers_encode_prompt(parts: dict, prompt: str) -> None:
    from diffusers import FluxPipeline

    clip_l = build_clip_text_model(parts["l_sd"])  # diffusers' Flux uses CLIPTextModel.pooler_output
    stack = FluxTextStack(
        clip_l, our_t5(parts["hf_t5"]), t5_tokenizer=parts["t5_tok"], clip_tokenizer=parts["clip_tok"]
    )
    context, pooled = stack.encode(prompt)
    pipe = FluxPipeline(
        scheduler=None,
        vae=None,
        text_encoder=clip_l,
        tokenizer=parts["clip_tok"],
        text_encoder_2=parts["hf_t5"],
        tokenizer_2=parts["hf_t5_tok"],
        transformer=None,
    )
    ref_context, ref_pooled, _ids = pipe.encode_prompt(prompt, prompt, device="cpu", max_sequence_length=256)
    assert context.shape == (1, 256, T5_TINY.d_model) and pooled.shape == (1, L_WIDTH)
    torch.testing.assert_close(context, ref_context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=1e-5)


def test_flux_does_not_truncate_long_prompts(parts: dict, tmp_path: Path) -> None:
    stack = FluxTextStack(
        parts["clip_l"],
        our_t5(parts["hf_t5"]),
        t5_tokenizer=parts["t5_tok"],
        clip_tokenizer=parts["clip_tok"],
    )
    context, pooled = stack.encode(LONG_PROMPT)
    ids = parts["hf_t5_tok"](LONG_PROMPT, return_tensors="pt")["input_ids"]
    assert context.shape == (1, ids.shape[1], T5_TINY.d_model) and ids.shape[1] > 256
    with torch.no_grad():
        torch.testing.assert_close(context, parts["hf_t5"](ids).last_hidden_state, atol=1e-5, rtol=1e-5)
    assert pooled.shape == (1, L_WIDTH)
