"""Emphasis syntax, embedding references and 77-token chunking (ComfyUI semantics)."""

from __future__ import annotations

import pytest

from engine.diffusion.text.prompt_weights import (
    EmbeddingSlot,
    chunk_token_groups,
    parse_prompt_weights,
    tokenize_prompt,
)
from engine.diffusion.text.tokenizer import load_clip_tokenizer

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def _parsed(prompt: str) -> list[tuple[str, float]]:
    return [(text, round(weight, 6)) for text, weight in parse_prompt_weights(prompt)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a photo of a cat", [("a photo of a cat", 1.0)]),
        ("(cat)", [("cat", 1.1)]),
        ("((cat))", [("cat", 1.21)]),
        ("(((cat)))", [("cat", 1.331)]),
        ("a (red:1.5) cat", [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]),
        ("(cat:0.5)", [("cat", 0.5)]),
        ("(cat: 0.25 )", [("cat", 0.25)]),
        # ComfyUI: an explicit weight is absolute, not multiplied by the enclosing groups.
        ("((cat:1.5))", [("cat", 1.5)]),
        ("((big:1.5) dog)", [("big", 1.5), (" dog", 1.1)]),
        ("(a (b) c)", [("a ", 1.1), ("b", 1.21), (" c", 1.1)]),
        # The last colon decides; text that is not a number leaves a plain 1.1 group.
        ("(time: 12:30 pm)", [("time: 12:30 pm", 1.1)]),
        ("(at 12:30)", [("at 12", 30.0)]),  # as in ComfyUI: the text after the last colon is a number
        ("(ratio 1:2:1.3)", [("ratio 1:2", 1.3)]),
        ("(embedding:foo)", [("embedding:foo", 1.1)]),
        ("(:1.3)", [(":1.3", 1.1)]),
        ("(cat:nan)", [("cat:nan", 1.1)]),
        # Escapes are literal parentheses and do not open groups.
        (r"\(cat\)", [("(cat)", 1.0)]),
        (r"(a \(b\):1.2)", [("a (b)", 1.2)]),
        # Unbalanced: an unmatched "(" keeps the rest literal; so does an unmatched ")".
        ("a (cat", [("a ", 1.0), ("(cat", 1.0)]),
        ("a) (b)", [("a) (b)", 1.0)]),
        ("", []),
    ],
)
def test_parse_prompt_weights(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert _parsed(prompt) == expected


def test_token_weights(tokenizer) -> None:
    result = tokenize_prompt("a (cat:1.5), photo", tokenizer)
    assert result.groups == [[(320, 1.0)], [(2368, 1.5)], [(267, 1.0), (1125, 1.0)]]
    assert result.missing_embeddings == []


def test_embedding_references(tokenizer) -> None:
    known = {"foo": 2, "bar": 1}
    asked: list[str] = []

    def resolve(name: str) -> int | None:
        asked.append(name)
        return known.get(name)

    result = tokenize_prompt(
        "a embedding:foo, cat (embedding:bar:1.3) embedding:nope dog", tokenizer, resolve_embedding=resolve
    )
    foo = [(EmbeddingSlot("foo", 0), 1.0), (EmbeddingSlot("foo", 1), 1.0)]
    assert result.groups == [
        [(320, 1.0)],
        foo,
        [(267, 1.0), (2368, 1.0)],  # ", cat": the comma after the name stays in the text
        [(EmbeddingSlot("bar", 0), 1.3)],
        [(1929, 1.0)],  # "dog" after the unknown reference
    ]
    assert result.missing_embeddings == ["nope"]
    assert asked[:2] == ["foo,", "foo"]  # exact name first, then without trailing commas


def test_embedding_prefix_is_text_without_a_library(tokenizer) -> None:
    plain = tokenize_prompt("embedding:foo", tokenizer)
    assert plain.groups == [[(t, 1.0) for t in tokenizer("embedding:foo")["input_ids"][1:-1]]]
    # Only a word that *starts* with the prefix is a reference.
    inline = tokenize_prompt("myembedding:foo", tokenizer, resolve_embedding=lambda name: 1)
    assert all(isinstance(t, int) for group in inline.groups for t, _ in group)


def _ids(chunk):
    return [t for t, _ in chunk]


def test_empty_prompt_is_one_padded_chunk() -> None:
    (chunk,) = chunk_token_groups([], pad_token_id=0)
    assert _ids(chunk) == [BOS, EOS] + [0] * 75
    (chunk,) = chunk_token_groups([], pad_token_id=EOS)
    assert _ids(chunk) == [BOS] + [EOS] * 76


def test_75_tokens_fill_one_chunk_76_need_two() -> None:
    group = [(1000 + i, 1.0) for i in range(75)]
    (chunk,) = chunk_token_groups([group], pad_token_id=0)
    assert _ids(chunk) == [BOS] + list(range(1000, 1075)) + [EOS]
    group.append((2000, 1.0))
    first, second = chunk_token_groups([group], pad_token_id=0)
    assert _ids(first) == [BOS] + list(range(1000, 1075)) + [EOS]  # long groups split at the boundary
    assert _ids(second) == [BOS, 2000, EOS] + [0] * 74


def test_short_groups_move_whole_to_the_next_chunk() -> None:
    filler = [(500, 1.0)] * 70
    word = [(600 + i, 1.5) for i in range(6)]  # 6 tokens, only 5 places left
    first, second = chunk_token_groups([filler, word], pad_token_id=EOS)
    assert _ids(first) == [BOS] + [500] * 70 + [EOS] * 6
    assert second[:8] == [(BOS, 1.0)] + word + [(EOS, 1.0)]
    assert [w for _, w in second[8:]] == [1.0] * 69  # padding is unweighted


def test_long_prompt_chunks(tokenizer) -> None:
    prompt = ", ".join(["red cat"] * 20 + ["(big:1.2) dog"] + ["red cat"] * 10)
    groups = tokenize_prompt(prompt, tokenizer).groups
    total = sum(len(g) for g in groups)
    assert total == 31 * 3 - 1
    chunks = chunk_token_groups(groups, pad_token_id=0)
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    assert all(c[0] == (BOS, 1.0) for c in chunks)
    # All prompt tokens survive, in order, across the chunk boundary.
    body = [tw for c in chunks for tw in c[1:] if tw[0] not in (EOS, 0)]
    assert body == [tw for g in groups for tw in g]
    assert any(w == pytest.approx(1.2) for _, w in body)
