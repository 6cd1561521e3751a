"""An `embedding:` reference the encoder cannot use is skipped (as ComfyUI does) but never silently: the
reason is logged and shown in the text-encode node's UI output (issue 12 §3)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine.api import NodeOutput
from engine.handles import load_checkpoint_handles
from engine.memory.devices import DeviceInfo
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin

C = builtin("conditioning")


class _RunsCodeWhenUnpickled:
    """A pickled object that is not a tensor: `torch.load(weights_only=True)` must refuse the file."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture
def clip(tmp_path: Path):
    checkpoint = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1", seed=4)
    embeddings = tmp_path / "embeddings"
    embeddings.mkdir()
    torch.save(
        {"string_to_param": {"*": torch.zeros(1, 32)}, "extra": _RunsCodeWhenUnpickled()},
        embeddings / "unsafe.pt",
    )
    manager = ModelManager(DeviceInfo.cpu())
    _, clip, _ = load_checkpoint_handles(checkpoint, manager=manager, embeddings_folder=embeddings)
    assert clip is not None
    return manager, clip  # the manager holds weak references: keep it alive with the handle


def test_refused_embedding_is_logged_and_shown_in_the_node_output(clip, caplog, capsys) -> None:
    _, handle = clip
    with caplog.at_level(logging.WARNING):
        out = C.clip_text_encode(text="a embedding:unsafe cat", clip=handle)
    assert "this must never run" not in capsys.readouterr().out
    assert isinstance(out, NodeOutput)
    (message,) = out.ui["text"]
    assert "unsafe" in message and "refused" in message and "pickle" in message
    logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unsafe" in r.getMessage() and "refused" in r.getMessage() for r in logged)
    # The reference is skipped: the conditioning equals the prompt without it.
    (plain,) = C.clip_text_encode(text="a cat", clip=handle)
    assert torch.equal(out.values[0][0][0], plain[0][0])


def test_prompt_without_problems_has_no_ui_text(clip) -> None:
    _, handle = clip
    out = C.clip_text_encode(text="a cat", clip=handle)
    assert isinstance(out, tuple) and len(out) == 1


def test_missing_embedding_is_reported_by_the_sdxl_refiner_node_too(clip) -> None:
    _, handle = clip
    out = C.clip_text_encode_sdxl_refiner(
        ascore=6.0, width=64, height=64, text="embedding:nowhere cat", clip=handle
    )
    assert isinstance(out, NodeOutput) and "nowhere" in out.ui["text"][0]
