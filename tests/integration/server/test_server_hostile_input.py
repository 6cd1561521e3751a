"""Hostile input gets a 4xx with a JSON error, never a 500, never an oversized answer, and the server keeps
answering afterwards (issue 12 §2-§3): malformed numbers, deep JSON, huge echoed values, malformed
multipart bodies, decompression bombs.

One real server per module (a background thread, raw bodies through http.client); every case leaves the
queue as it was, so the cases do not depend on one another or on their order.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from engine.server.config import ServerConfig

BOUNDARY = "hostileBoundary7"
MAX_ANSWER_BYTES = 16 * 1024  # every refusal here is a short message, whatever the request held
BIG = 10 * 1024 * 1024


def _prompt(value: Any = 1, class_type: Any = "StubConst") -> dict[str, Any]:
    return {
        "1": {"class_type": class_type, "inputs": {"value": value}},
        "2": {"class_type": "StubSink", "inputs": {"value": ["1", 0]}},
    }


def _body(**fields: Any) -> bytes:
    return json.dumps({"prompt": _prompt(), **fields}).encode()


def _raw_number(literal: str) -> bytes:
    """A body whose `number` is written as-is (JSON extensions, huge literals)."""
    return b'{"prompt": ' + json.dumps(_prompt()).encode() + b', "number": ' + literal.encode() + b"}"


def _deep(levels: int, leaf: str = "1") -> str:
    return "[" * levels + leaf + "]" * levels


def _png(size: tuple[int, int] = (4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels: a decompression bomb to anything that decodes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _part(headers: str | bytes, body: bytes) -> bytes:
    head = headers.encode() if isinstance(headers, str) else headers
    return f"--{BOUNDARY}\r\n".encode() + head + b"\r\n\r\n" + body + b"\r\n"


def _image_part(filename: str | bytes = "a.png", data: bytes | None = None) -> bytes:
    name = filename.encode() if isinstance(filename, str) else filename
    header = (
        b'Content-Disposition: form-data; name="image"; filename="' + name + b'"\r\nContent-Type: image/png'
    )
    return _part(header, _png() if data is None else data)


def _field(name: str, value: bytes) -> bytes:
    return _part(f'Content-Disposition: form-data; name="{name}"', value)


CLOSE = f"--{BOUNDARY}--\r\n".encode()
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"

# (route, content type, body, expected status, expected error type or None)
JSON_CASES: dict[str, tuple[str, str, bytes, int, str | None]] = {
    "number NaN literal": ("/prompt", "application/json", _raw_number("NaN"), 400, "invalid_json"),
    "number Infinity literal": ("/prompt", "application/json", _raw_number("Infinity"), 400, "invalid_json"),
    "number -Infinity literal": (
        "/prompt",
        "application/json",
        _raw_number("-Infinity"),
        400,
        "invalid_json",
    ),
    "number 'nan' string": ("/prompt", "application/json", _body(number="nan"), 400, "invalid_prompt"),
    "number 'inf' string": ("/prompt", "application/json", _body(number="inf"), 400, "invalid_prompt"),
    "number numeric string": ("/prompt", "application/json", _body(number="5"), 400, "invalid_prompt"),
    "number 1e309 (overflows to inf)": (
        "/prompt",
        "application/json",
        _raw_number("1e309"),
        400,
        "invalid_prompt",
    ),
    "number 10**400 integer": (
        "/prompt",
        "application/json",
        _raw_number("1" + "0" * 400),
        400,
        "invalid_prompt",
    ),
    "number 1e300": ("/prompt", "application/json", _raw_number("1e300"), 400, "invalid_prompt"),
    "number -2**60": ("/prompt", "application/json", _raw_number(str(-(2**60))), 400, "invalid_prompt"),
    "number true": ("/prompt", "application/json", _body(number=True), 400, "invalid_prompt"),
    "number list": ("/prompt", "application/json", _body(number=[1]), 400, "invalid_prompt"),
    "number object": ("/prompt", "application/json", _body(number={}), 400, "invalid_prompt"),
    "front string": ("/prompt", "application/json", _body(front="yes"), 400, "invalid_prompt"),
    "front number": ("/prompt", "application/json", _body(front=1), 400, "invalid_prompt"),
    "NaN inside an input": (
        "/prompt",
        "application/json",
        b'{"prompt": {"1": {"class_type": "StubConst", "inputs": {"value": NaN}}}}',
        400,
        "invalid_json",
    ),
    "whole body nested 100000 levels": (
        "/prompt",
        "application/json",
        _deep(100_000).encode(),
        400,
        "invalid_json",
    ),
    "objects nested 100000 levels": (
        "/prompt",
        "application/json",
        ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(),
        400,
        "invalid_json",
    ),
    "input value nested 100000 levels": (
        "/prompt",
        "application/json",
        (
            '{"prompt": {"1": {"class_type": "StubConst", "inputs": {"value": ' + _deep(100_000) + "}}}}"
        ).encode(),
        400,
        "invalid_json",
    ),
    "extra_data nested 500 levels": (
        "/prompt",
        "application/json",
        ('{"prompt": ' + json.dumps(_prompt()) + ', "extra_data": {"x": ' + _deep(500) + "}}").encode(),
        400,
        "invalid_json",
    ),
    "10 MB class_type": (
        "/prompt",
        "application/json",
        json.dumps({"prompt": _prompt(class_type="X" * BIG)}).encode(),
        400,
        "invalid_prompt",
    ),
    "10 MB node id": (
        "/prompt",
        "application/json",
        json.dumps({"prompt": {"N" * BIG: {"class_type": "NoSuchNode", "inputs": {}}}}).encode(),
        400,
        None,
    ),
    "10 MB input value": ("/prompt", "application/json", _body(prompt=_prompt(value="V" * BIG)), 400, None),
    "10 MB prompt_id": ("/prompt", "application/json", _body(prompt_id="p" * BIG), 400, "invalid_prompt"),
    "class_type not a string": (
        "/prompt",
        "application/json",
        _body(prompt=_prompt(class_type=[1])),
        400,
        None,
    ),
    "lone surrogate class_type": (
        "/prompt",
        "application/json",
        json.dumps({"prompt": _prompt(class_type="\ud800")}).encode(),
        400,
        None,
    ),
    "invalid UTF-8": ("/prompt", "application/json", b'{"prompt": "\xff\xfe"}', 400, "invalid_json"),
    "truncated JSON": ("/prompt", "application/json", _body()[:-3], 400, "invalid_json"),
    "empty body": ("/prompt", "application/json", b"", 400, "invalid_json"),
    "array body": ("/prompt", "application/json", b"[1, 2]", 400, "invalid_prompt"),
    "prompt is a list": ("/prompt", "application/json", b'{"prompt": [1]}', 400, "no_prompt"),
    "extra_data is a list": ("/prompt", "application/json", _body(extra_data=[1]), 400, "invalid_prompt"),
    "targets is a string": (
        "/prompt",
        "application/json",
        _body(partial_execution_targets="2"),
        400,
        "invalid_prompt",
    ),
    "queue delete not a list": ("/queue", "application/json", b'{"delete": "abc"}', 400, "invalid_request"),
    "queue body nested": ("/queue", "application/json", _deep(100_000).encode(), 400, "invalid_json"),
    "history body array": ("/history", "application/json", b"[]", 400, "invalid_request"),
    "history delete objects": ("/history", "application/json", b'{"delete": [{}]}', 400, "invalid_request"),
    "interrupt body nested": ("/interrupt", "application/json", _deep(100_000).encode(), 400, "invalid_json"),
    "free body string": ("/free", "application/json", b'"x"', 400, "invalid_request"),
    "free body NaN": ("/free", "application/json", b'{"unload_models": NaN}', 400, "invalid_json"),
}

MULTIPART_CASES: dict[str, tuple[str, str, bytes, int, str | None]] = {
    "NUL in filename": ("/upload/image", MULTIPART, _image_part(b"a\x00.png") + CLOSE, 400, None),
    "NUL in filename (mask)": ("/upload/mask", MULTIPART, _image_part(b"a\x00.png") + CLOSE, 400, None),
    "percent-encoded NUL in filename": (
        "/upload/image",
        MULTIPART,
        _part(
            "Content-Disposition: form-data; name=\"image\"; filename*=utf-8''a%00.png\r\nContent-Type: image/png",
            _png(),
        )
        + CLOSE,
        400,
        "invalid_filename",
    ),
    "cut before the closing boundary": ("/upload/image", MULTIPART, _image_part(), 400, "invalid_multipart"),
    "cut before the closing boundary (mask)": (
        "/upload/mask",
        MULTIPART,
        _image_part(),
        400,
        "invalid_multipart",
    ),
    "cut inside the part headers": (
        "/upload/image",
        MULTIPART,
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; na".encode(),
        400,
        "invalid_multipart",
    ),
    "cut inside the file": ("/upload/image", MULTIPART, _image_part()[:90], 400, "invalid_multipart"),
    "no boundary parameter": (
        "/upload/image",
        "multipart/form-data",
        _image_part() + CLOSE,
        400,
        "invalid_multipart",
    ),
    "empty boundary parameter": (
        "/upload/image",
        'multipart/form-data; boundary=""',
        _image_part() + CLOSE,
        400,
        "invalid_multipart",
    ),
    "boundary not in the body": (
        "/upload/image",
        "multipart/form-data; boundary=other",
        _image_part() + CLOSE,
        400,
        "invalid_multipart",
    ),
    "part header without a colon": (
        "/upload/image",
        MULTIPART,
        _part('Content-Disposition form-data; name="image"; filename="a.png"', _png()) + CLOSE,
        400,
        "invalid_multipart",
    ),
    "part header without a colon (mask)": (
        "/upload/mask",
        MULTIPART,
        _part('Content-Disposition form-data; name="image"; filename="a.png"', _png()) + CLOSE,
        400,
        "invalid_multipart",
    ),
    "part header line too long": (
        "/upload/image",
        MULTIPART,
        _part("X-Junk: " + "j" * 70_000, b"") + _image_part() + CLOSE,
        400,
        "invalid_multipart",
    ),
    "nested multipart part": (
        "/upload/image",
        MULTIPART,
        _part(
            'Content-Disposition: form-data; name="image"\r\nContent-Type: multipart/mixed; boundary=zz',
            b"--zz\r\n",
        )
        + CLOSE,
        400,
        "invalid_multipart",
    ),
    "empty body": ("/upload/image", MULTIPART, b"", 400, "invalid_multipart"),
    "garbage body": ("/upload/image", MULTIPART, b"hello world, not a form", 400, "invalid_multipart"),
    "only the closing boundary": ("/upload/image", MULTIPART, CLOSE, 400, "invalid_request"),
    "image part without a filename": (
        "/upload/image",
        MULTIPART,
        _field("image", _png()) + CLOSE,
        400,
        "invalid_request",
    ),
    "form field over 64 KB": (
        "/upload/image",
        MULTIPART,
        _field("subfolder", b"s" * (65 * 1024)) + _image_part() + CLOSE,
        413,
        "upload_too_large",
    ),
    "not multipart at all": ("/upload/image", "application/octet-stream", _png(), 400, "invalid_request"),
    "decompression bomb (over twice Pillow's limit)": (
        "/upload/image",
        MULTIPART,
        _image_part(data=_png_header_only(30_000, 30_000)) + CLOSE,
        413,
        "image_too_large",
    ),
    "decompression bomb (over Pillow's limit)": (
        "/upload/image",
        MULTIPART,
        _image_part(data=_png_header_only(15_000, 15_000)) + CLOSE,
        413,
        "image_too_large",
    ),
    "decompression bomb (mask)": (
        "/upload/mask",
        MULTIPART,
        _image_part(data=_png_header_only(30_000, 30_000)) + CLOSE,
        413,
        "image_too_large",
    ),
    "mask original_ref nested 60000 levels": (
        "/upload/mask",
        MULTIPART,
        _field("original_ref", b"[" * 60_000) + _image_part() + CLOSE,
        400,
        "invalid_request",
    ),
    "mask original_ref with NaN": (
        "/upload/mask",
        MULTIPART,
        _field("original_ref", b'{"filename": NaN}') + _image_part() + CLOSE,
        400,
        "invalid_request",
    ),
    "mask original_ref not JSON": (
        "/upload/mask",
        MULTIPART,
        _field("original_ref", b"{not json") + _image_part() + CLOSE,
        400,
        "invalid_request",
    ),
}

CASES = {**JSON_CASES, **MULTIPART_CASES}


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.fixture(scope="module")
def server(kit, tmp_path_factory) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("hostile")
    srv = kit.ServerThread(kit.make_runtime(base), ServerConfig(max_upload_bytes=40 * 1024 * 1024))
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_body_gets_a_bounded_4xx_and_the_server_keeps_answering(server, name):
    route, content_type, body, status, kind = CASES[name]
    got, raw = server.request("POST", route, body, {"Content-Type": content_type})
    assert got == status, (name, got, raw[:300])
    assert len(raw) < MAX_ANSWER_BYTES, (name, len(raw))
    answer = json.loads(raw)
    assert isinstance(answer["error"]["type"], str) and answer["error"]["type"]
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
    if kind is not None:
        assert answer["error"]["type"] == kind, answer
    if route == "/prompt":
        assert isinstance(answer["node_errors"], dict)
    # still serving, and nothing was queued by the refused request
    status_after, queue = server.request("GET", "/queue")
    assert status_after == 200
    assert json.loads(queue) == {"queue_running": [], "queue_pending": []}


@pytest.mark.parametrize(
    "query",
    [
        "max_items=99999999999999999999",
        "offset=99999999999999999999",
        "max_items=-1",
        "max_items=x",
        "offset=1e3",
    ],
)
def test_history_paging_parameters_out_of_range_get_a_400(server, query):
    status, raw = server.request("GET", f"/history?{query}")
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request"
    assert server.request("GET", "/history?max_items=2&offset=0")[0] == 200


def test_echoed_values_are_cut_in_validation_errors(server):
    """A 10 MB class_type once came back as a 42 MB answer: every echoed string is cut."""
    body = json.dumps(
        {
            "prompt": {
                "1": {"class_type": "X" * BIG, "inputs": {}},
                "2": {"class_type": "StubConst", "inputs": {"value": "Y" * BIG}},
                "3": {"class_type": "StubSink", "inputs": {"value": ["2", 0]}},
            }
        }
    ).encode()
    status, raw = server.request("POST", "/prompt", body, {"Content-Type": "application/json"})
    assert status == 400 and len(raw) < MAX_ANSWER_BYTES
    answer = json.loads(raw)
    assert set(answer["node_errors"]) == {"1", "2"}  # every problem still reported, each shortened
    assert answer["node_errors"]["1"]["class_type"].startswith("XXXX")
    assert "more characters" in answer["node_errors"]["1"]["class_type"]
