"""The CLIP tokenizer built from the openai-clip BPE file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.diffusion.text.tokenizer import (
    VOCAB_SIZE,
    ClipTokenizerLoader,
    build_vocab,
    bytes_to_unicode,
    find_bpe_file,
    load_clip_tokenizer,
    read_merges,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def test_reference_ids(tokenizer) -> None:
    # The ids every SD implementation produces for this prompt (DESIGN.md section 6).
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_case_whitespace_and_punctuation(tokenizer) -> None:
    # CLIP lowercases and collapses whitespace; "," is its own token (267).
    assert tokenizer("A   Photo,of a CAT")["input_ids"] == [49406, 320, 1125, 267, 539, 320, 2368, 49407]
    assert tokenizer("")["input_ids"] == [49406, 49407]


def test_vocab_construction_matches_clip_layout() -> None:
    chars = bytes_to_unicode()
    assert len(chars) == 256 and len(set(chars)) == 256
    vocab = build_vocab(read_merges(find_bpe_file()))
    assert len(vocab) == VOCAB_SIZE
    assert vocab["!"] == 0  # first printable byte
    assert vocab["!</w>"] == 256  # the '</w>' variants follow the 256 byte characters
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["cat</w>"] == 2368


def test_cache_dir_is_written_once_and_reused(tmp_path: Path) -> None:
    cache = tmp_path / "clip-tokenizer"
    tok = ClipTokenizerLoader(cache).load()
    assert (cache / "vocab.json").is_file() and (cache / "merges.txt").is_file()
    stamp = (cache / "vocab.json").stat().st_mtime_ns
    again = ClipTokenizerLoader(cache).load()
    assert (cache / "vocab.json").stat().st_mtime_ns == stamp  # not rewritten
    assert again("a photo of a cat")["input_ids"] == tok("a photo of a cat")["input_ids"]


def test_loader_caches_in_the_object() -> None:
    loader = ClipTokenizerLoader()
    assert loader.load() is loader.load()
    assert ClipTokenizerLoader().load() is not loader.load()  # no hidden module-level cache


@pytest.mark.slow
def test_never_imports_the_clip_package() -> None:
    code = (
        "import sys, engine.diffusion.text.tokenizer as t; "
        "assert 'transformers' not in sys.modules, 'import-time transformers'; "
        "t.load_clip_tokenizer(); "
        "assert 'clip' not in sys.modules, 'clip was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_max_length_is_clips_context(tokenizer) -> None:
    """Other code (e.g. a diffusers pipeline) pads to model_max_length: it must be CLIP's 77 positions."""
    assert tokenizer.model_max_length == 77
    padded = tokenizer("a photo of a cat", padding="max_length", max_length=tokenizer.model_max_length)
    assert len(padded["input_ids"]) == 77 and padded["input_ids"][:7] == [
        49406,
        320,
        1125,
        539,
        320,
        2368,
        49407,
    ]
