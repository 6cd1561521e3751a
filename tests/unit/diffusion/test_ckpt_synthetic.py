"""The tiny-checkpoint factory is deterministic, and the full-size SD1.5 key set has the real sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.diffusion.checkpoints.detect import ModelFamily
from engine.diffusion.checkpoints.io import read_state_dict
from tests.factories.checkpoints import _stream_safetensors, sd15_shapes, write_tiny_checkpoint


@pytest.mark.slow
def test_ckpt_tiny_files_are_deterministic(tmp_path: Path) -> None:
    a = write_tiny_checkpoint(tmp_path / "a.safetensors", ModelFamily.SD2, seed=3)
    b = write_tiny_checkpoint(tmp_path / "b.safetensors", ModelFamily.SD2, seed=3)
    c = write_tiny_checkpoint(tmp_path / "c.safetensors", ModelFamily.SD2, seed=4)
    assert a.read_bytes() == b.read_bytes()
    sa, sc = read_state_dict(a), read_state_dict(c)
    assert sa.keys() == sc.keys()
    assert not torch.equal(sa["model.diffusion_model.out.2.weight"], sc["model.diffusion_model.out.2.weight"])


def test_ckpt_sd15_key_set_has_the_real_parameter_counts() -> None:
    shapes = sd15_shapes()
    count = {
        p: sum(math.prod(s) for k, s in shapes.items() if k.startswith(p))
        for p in ("model.", "first_stage", "cond_stage")
    }
    # Published sizes of SD1.5's parts: UNet 859,520,964; VAE 83,653,863; CLIP ViT-L text 123,060,480.
    assert count["model."] == 859_520_964
    assert count["first_stage"] == 83_653_863
    assert count["cond_stage"] == 123_060_480
    assert shapes["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)


def test_ckpt_streamed_writer_round_trips(tmp_path: Path) -> None:
    tensors = {
        "x": torch.arange(6, dtype=torch.float16).reshape(2, 3),
        "y": torch.ones(5, dtype=torch.bfloat16),
    }
    path = tmp_path / "s.safetensors"
    _stream_safetensors(
        path, [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()], iter(tensors.values())
    )
    back = read_state_dict(path)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
