"""Textual-inversion files: lookup and the common layouts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.text.embeddings import EmbeddingError, EmbeddingLibrary


def _vec(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "embeddings"
    (root / "sub").mkdir(parents=True)
    # A1111 .pt (string_to_param, plus the metadata A1111 stores next to it)
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": _vec(2, 32, 1)},
            "name": "a1111",
            "step": 500,
        },
        root / "a1111.pt",
    )
    save_file({"emb_params": _vec(3, 32, 2)}, str(root / "emb_params.safetensors"))
    save_file({"clip_l": _vec(2, 32, 3), "clip_g": _vec(2, 64, 4)}, str(root / "sub" / "xl.safetensors"))
    torch.save({"<my-token>": _vec(1, 32, 5)[0]}, root / "diffusers.bin")  # one (width,) vector
    return root


def test_layouts(folder: Path) -> None:
    lib = EmbeddingLibrary(folder)
    assert torch.equal(lib.get("a1111").vectors_for("clip_l", 32), _vec(2, 32, 1))
    assert torch.equal(lib.get("emb_params").vectors_for("clip_h", 32), _vec(3, 32, 2))
    xl = lib.get("xl")  # found in a subfolder
    assert torch.equal(xl.vectors_for("clip_l", 32), _vec(2, 32, 3))
    assert torch.equal(xl.vectors_for("clip_g", 64), _vec(2, 64, 4))
    single = lib.get("diffusers").vectors_for("clip_l", 32)
    assert single.shape == (1, 32) and torch.equal(single[0], _vec(1, 32, 5)[0])


def test_lookup_rules(folder: Path) -> None:
    lib = EmbeddingLibrary(folder)
    assert lib.names() == ["a1111", "diffusers", "emb_params", "sub/xl"]
    assert lib.find("a1111.pt") == (folder / "a1111.pt").resolve()  # name with extension
    assert lib.find("sub/xl") == (folder / "sub" / "xl.safetensors").resolve()
    assert lib.load("missing") is None
    with pytest.raises(EmbeddingError, match="not found"):
        lib.get("missing")
    # Names never escape the folder.
    save_file({"emb_params": _vec(1, 32, 0)}, str(folder.parent / "outside.safetensors"))
    assert lib.find("../outside") is None
    assert EmbeddingLibrary(folder.parent / "nope").names() == []


def test_width_mismatch_is_explained(folder: Path) -> None:
    lib = EmbeddingLibrary(folder)
    with pytest.raises(EmbeddingError, match=r"width 1280 .*'clip_g'.*another model family"):
        lib.get("a1111").vectors_for("clip_g", 1280)
    with pytest.raises(EmbeddingError, match="width 48"):
        lib.get("xl").vectors_for("clip_g", 48)


def test_unsafe_pickle_is_refused(folder: Path) -> None:
    # weights_only loading rejects arbitrary Python objects (here an argparse.Namespace).
    torch.save({"emb_params": _vec(1, 32, 0), "meta": argparse.Namespace(x=1)}, folder / "evil.pt")
    with pytest.raises(EmbeddingError, match=r"evil\.pt.*safetensors"):
        EmbeddingLibrary(folder).get("evil")


def test_not_an_embedding(folder: Path) -> None:
    save_file({"ids": torch.arange(4)}, str(folder / "ints.safetensors"))
    with pytest.raises(EmbeddingError, match="float tensor"):
        EmbeddingLibrary(folder).get("ints")


def test_reload_after_change(folder: Path) -> None:
    lib = EmbeddingLibrary(folder)
    first = lib.get("emb_params")
    assert lib.get("emb_params") is first  # cached
    save_file({"emb_params": _vec(1, 32, 9)}, str(folder / "emb_params.safetensors"))
    stat = (folder / "emb_params.safetensors").stat()
    os.utime(folder / "emb_params.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert lib.get("emb_params").vectors_for("clip_l", 32).shape == (1, 32)
