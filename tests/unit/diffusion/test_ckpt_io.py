"""Reading weight files: dtype conversion on read, metadata, and precise errors for bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints.io import CheckpointError, read_metadata, read_state_dict


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(5, 7, generator=g),
        "b.bias": torch.randn(3, generator=g),
        "c.scalar": torch.tensor(2.5),
        "ids": torch.arange(6).unsqueeze(0),  # an integer buffer keeps its dtype
    }


@pytest.mark.parametrize(
    ("file_dtype", "target"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float16),
        (torch.float32, torch.bfloat16),
        (torch.float16, None),
    ],
)
def test_ckpt_safetensors_cast_on_read(
    tmp_path: Path, file_dtype: torch.dtype, target: torch.dtype | None
) -> None:
    ref = {k: (v.to(file_dtype) if v.is_floating_point() else v) for k, v in _weights().items()}
    path = tmp_path / "w.safetensors"
    save_file(ref, str(path))
    sd = read_state_dict(path, dtype=target)
    assert set(sd) == set(ref)
    for k, v in ref.items():
        want = v.to(target) if (target is not None and v.is_floating_point()) else v
        assert sd[k].dtype == want.dtype, k
        assert torch.equal(sd[k], want), k
    assert sd["ids"].dtype == torch.int64


def test_ckpt_safetensors_mmap_and_filter(tmp_path: Path) -> None:
    ref = _weights()
    path = tmp_path / "w.safetensors"
    save_file(ref, str(path), metadata={"modelspec.prediction_type": "v"})
    sd = read_state_dict(path, mmap=True, keys_filter=lambda k: k != "b.bias")
    assert set(sd) == set(ref) - {"b.bias"}
    assert all(torch.equal(sd[k], ref[k]) for k in sd)
    assert read_metadata(path) == {"modelspec.prediction_type": "v"}


def test_ckpt_pickle_round_trip_unwraps_state_dict(tmp_path: Path) -> None:
    ref = _weights()
    path = tmp_path / "w.ckpt"
    torch.save(
        {
            "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in ref.items()},
            "global_step": 7,
        },
        path,
    )
    sd = read_state_dict(path, dtype=torch.float32)
    assert set(sd) == set(ref)
    assert torch.equal(sd["a.weight"], ref["a.weight"].half().float())
    assert read_metadata(path) == {}


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_ckpt_pickle_with_code_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker  # type: ignore[attr-defined]
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": evil}, path)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "evil.ckpt" in msg
    assert "refused to load" in msg and "objects other than tensors" in msg
    assert "system" in msg  # names the offending global
    assert not marker.exists()


def test_ckpt_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(1000)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(
        CheckpointError, match=r"cut\.safetensors: file is truncated.*'w' ends at byte.*1000 bytes missing"
    ):
        read_state_dict(path)


def test_ckpt_text_file_renamed_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "notes.safetensors"
    path.write_text("hello, this is a readme and not a model file at all\n" * 3)
    with pytest.raises(
        CheckpointError, match=r"notes\.safetensors: not a safetensors file: the first 8 bytes b'hello, t'"
    ):
        read_state_dict(path)


def test_ckpt_header_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes((16).to_bytes(8, "little") + b"{not json at all" + b"\0" * 8)
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        read_state_dict(path)


def test_ckpt_missing_empty_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: file not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="too short to be a safetensors file"):
        read_state_dict(empty)
    no_tensors = tmp_path / "none.safetensors"
    save_file({}, str(no_tensors))
    with pytest.raises(CheckpointError, match=r"contains no tensors \(empty state dict\)"):
        read_state_dict(no_tensors)
    odd = tmp_path / "model.onnx"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported file type '.onnx'"):
        read_state_dict(odd)


def test_ckpt_corrupt_pickle(tmp_path: Path) -> None:
    path = tmp_path / "broken.ckpt"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"broken\.ckpt: not a readable PyTorch"):
        read_state_dict(path)
