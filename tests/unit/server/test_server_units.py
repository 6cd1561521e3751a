"""Units of the server: path checks, file-name sanitising, preview frames, the store's limits and
restart state, the structured log formatter."""

from __future__ import annotations

import io
import json
import logging
import os
import struct

import pytest
from PIL import Image

from engine.server.logs import JsonFormatter, KeyValueFormatter
from engine.server.previews import encode_preview_frame
from engine.server.security import BadRequest, check_relative, confine, sanitize_filename
from engine.server.store import PromptStore, QueuedPrompt


@pytest.mark.parametrize(
    "value",
    [
        "..",
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a\\b",
        "..%2fx",
        "%2e%2e",
        "x%5cy",
        "a\x00b",
        "C:/x",
        "a\nb",
        "",
        "/",
    ],
)
def test_check_relative_refuses_escapes(value):
    with pytest.raises(BadRequest):
        check_relative(value, "filename")


def test_check_relative_accepts_plain_paths():
    assert check_relative("a/b/c.png", "x") == ["a", "b", "c.png"]
    assert check_relative("./a//b", "x") == ["a", "b"]
    assert check_relative("", "subfolder", allow_empty=True) == []
    assert check_relative("100% done.png", "x") == ["100% done.png"]


def test_confine_follows_symlinks(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", root / "link")
    with pytest.raises(BadRequest) as caught:
        confine(root, "link")
    assert caught.value.status == 403
    assert confine(root, "a", "b.png") == (root / "a" / "b.png").resolve()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("photo.png", "photo.png"),
        ("../../evil.png", "evil.png"),
        ("..\\..\\win.png", "win.png"),
        ("..%2F..%2Fx.png", "x.png"),
        (".hidden.png", "hidden.png"),
        ("a<b>|c.png", "a_b__c.png"),
        ("tab\there.png", "tabhere.png"),
        ("x" * 300 + ".png", "x" * 196 + ".png"),
    ],
)
def test_sanitize_filename(name, expected):
    assert sanitize_filename(name) == expected


def test_sanitize_filename_refuses_empty_names():
    for name in ("", "..", "/", "\x00"):
        with pytest.raises(BadRequest):
            sanitize_filename(name)


def test_preview_frame_header_and_formats():
    image = Image.new("RGB", (1024, 512), (255, 0, 0))
    frame = encode_preview_frame(image, "jpeg", max_size=256)
    assert frame is not None and struct.unpack(">II", frame[:8]) == (1, 1)
    decoded = Image.open(io.BytesIO(frame[8:]))
    assert decoded.format == "JPEG" and decoded.size == (256, 128)
    png = encode_preview_frame(("JPEG", image, 512), "png")
    assert png is not None and png[:8] == struct.pack(">II", 1, 2) and png[8:12] == b"\x89PNG"
    import numpy as np

    array = np.zeros((1, 4, 4, 3), dtype=np.float32)
    array[..., 1] = 1.0
    from_array = encode_preview_frame(array, "png")
    assert from_array is not None
    assert Image.open(io.BytesIO(from_array[8:])).getpixel((0, 0)) == (0, 255, 0)
    assert encode_preview_frame("not an image") is None


def _item(prompt_id: str, number: float, seq: int) -> QueuedPrompt:
    return QueuedPrompt(number, prompt_id, {"1": {"class_type": "X", "inputs": {}}}, {}, ["1"], seq)


def test_store_restart_state_and_history_limit(tmp_path):
    store = PromptStore(tmp_path / "q.sqlite3", history_limit=2)
    store.add(_item("a", 0, 0), 1)
    store.add(_item("b", 1, 1), 2)
    store.add(_item("front", -2, 2), 3)
    store.mark_running("a")
    store.close()

    reopened = PromptStore(tmp_path / "q.sqlite3", history_limit=2)
    pending, running = reopened.load_queue()
    assert [i.prompt_id for i in pending] == ["front", "b"] and [i.prompt_id for i in running] == ["a"]
    assert reopened.next_numbers() == (3, 3)
    for index, prompt_id in enumerate(("a", "b", "front")):
        reopened.finish(prompt_id, {"status": {"status_str": "success"}, "n": index})
    assert list(reopened.history()) == ["b", "front"]  # limit 2: oldest dropped
    assert list(reopened.history(max_items=1)) == ["front"]
    assert list(reopened.history(max_items=1, offset=1)) == ["b"]
    assert reopened.load_queue() == ([], [])
    reopened.close()


def test_log_formatters_include_extra_fields():
    record = logging.LogRecord("diffgraph.server.queue", logging.INFO, "", 0, "prompt finished", None, None)
    record.prompt_id = "abc"
    record.status = "success"
    text = KeyValueFormatter().format(record)
    assert text.endswith("INFO diffgraph.server.queue prompt finished prompt_id=abc status=success")
    body = json.loads(JsonFormatter().format(record))
    assert body["msg"] == "prompt finished" and body["prompt_id"] == "abc" and body["level"] == "INFO"
