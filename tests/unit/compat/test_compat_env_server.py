"""`server.PromptServer.instance` without a server (the CLI's `diffgraph run`): packs that message the
UI or read the queue keep working; and the binary frames send_sync builds are ComfyUI's."""

from __future__ import annotations

import io
import json
import struct
import sys

import pytest
from PIL import Image

from engine.cli import main
from engine.comfy_compat.prompt_server import BinaryEventTypes, encode_message
from tests.unit.compat.env_packs import runtime_with_pack

HEADLESS_PACK = """
import json
import comfy.utils
from server import PromptServer


class Report:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3})}}

    def run(self, steps):
        server = PromptServer.instance
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            bar.update(1)
        server.send_sync("report.state", {"steps": steps})
        state = {
            "client_id": server.client_id,
            "last_node_id": server.last_node_id,
            "last_prompt_id": server.last_prompt_id is not None,
            "remaining": server.prompt_queue.get_tasks_remaining(),
            "queue": server.prompt_queue.get_current_queue(),
            "sockets": server.sockets,
            "metadata": server.sockets_metadata,
        }
        return {"ui": {"state": [json.dumps(state)]}}


NODE_CLASS_MAPPINGS = {"HeadlessReport": Report}
"""


def test_a_cli_run_gives_packs_a_working_prompt_server(tmp_path, capsys):
    runtime_with_pack(tmp_path, "headless_pack", HEADLESS_PACK)  # writes the pack
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"5": {"class_type": "HeadlessReport", "inputs": {"steps": 3}}}))
    code = main(["run", str(workflow), "--base-directory", str(tmp_path), "--cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    bridge = sys.modules["server"].PromptServer.instance._bridge
    assert bridge.sent_headless == 1  # send_sync went nowhere, without an error


def test_prompt_server_attributes_without_a_server(tmp_path):
    from engine.graph.api_format import parse_api_workflow

    runtime = runtime_with_pack(tmp_path, "headless_pack", HEADLESS_PACK)
    prompt = {"5": {"class_type": "HeadlessReport", "inputs": {"steps": 2}}}
    result = runtime.executor.run(parse_api_workflow(prompt), targets=["5"])
    assert result.ok
    state = json.loads(result.ui_outputs["5"]["state"][0])
    assert state == {
        "client_id": None,
        "last_node_id": "5",  # the running node, also without a server
        "last_prompt_id": True,
        "remaining": 0,
        "queue": [[], []],
        "sockets": {},
        "metadata": {},
    }


def _png(size=(8, 4)) -> Image.Image:
    return Image.new("RGB", size, (10, 200, 30))


def test_binary_frames_are_comfyuis():
    frame = encode_message(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, ("PNG", _png((40, 20)), 10))
    assert struct.unpack(">II", frame[:8]) == (BinaryEventTypes.PREVIEW_IMAGE, 2)
    assert Image.open(io.BytesIO(frame[8:])).size == (10, 5)  # contained in max_size
    jpeg = encode_message(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, ("JPEG", _png(), None))
    assert struct.unpack(">II", jpeg[:8]) == (1, 1) and jpeg[8:10] == b"\xff\xd8"
    meta = encode_message(
        BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA, (("PNG", _png(), None), {"node_id": "3"})
    )
    event, length = struct.unpack(">II", meta[:8])
    assert event == 4 and json.loads(meta[8 : 8 + length]) == {"node_id": "3", "image_type": "image/png"}
    assert Image.open(io.BytesIO(meta[8 + length :])).size == (8, 4)
    assert encode_message(3, b"abc") == struct.pack(">I", 3) + b"abc"
    assert encode_message("my.event", {"a": 1}) is None  # a JSON message
    with pytest.raises(RuntimeError):
        encode_message("text", b"bytes need an integer event type")
