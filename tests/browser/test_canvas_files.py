"""Workflow files in the browser: ComfyUI UI-format round trip, drag and drop of JSON and PNG,
API export identical to the server's own conversion, persistence across reloads."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from tests.browser.helpers import api_prompt, workflow

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A UI-format document shaped like ComfyUI's saves: seed + control_after_generate, a reroute, a
# bypassed node (mode 4), a muted node (mode 2), a converted widget fed by a PrimitiveNode, a group.
COMFY_DOC = {
    "last_node_id": 8,
    "last_link_id": 7,
    "nodes": [
        {
            "id": 1,
            "type": "StubLoader",
            "pos": [10, 100],
            "size": [260, 60],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1], "slot_index": 0}],
            "properties": {"Node name for S&R": "StubLoader"},
            "widgets_values": ["tiny_b.safetensors"],
        },
        {
            "id": 2,
            "type": "Reroute",
            "pos": [300, 100],
            "size": [75, 26],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [{"name": "", "type": "*", "link": 1}],
            "outputs": [{"name": "", "type": "MODEL", "links": [2], "slot_index": 0}],
            "properties": {"showOutputText": False, "horizontal": False},
        },
        {
            "id": 3,
            "type": "StubSampler",
            "pos": [420, 100],
            "size": [300, 330],
            "flags": {},
            "order": 2,
            "mode": 0,
            "inputs": [
                {"name": "model", "type": "MODEL", "link": 2},
                {"name": "steps", "type": "INT", "link": 6, "widget": {"name": "steps"}},
            ],
            "outputs": [{"name": "LATENT", "type": "LATENT", "links": [3], "slot_index": 0}],
            "properties": {"Node name for S&R": "StubSampler"},
            "widgets_values": [1234, "increment", 4, 6.5, "a red fox", True, "heun"],
            "title": "My Sampler",
        },
        {
            "id": 4,
            "type": "StubDecode",
            "pos": [760, 100],
            "size": [200, 50],
            "flags": {},
            "order": 3,
            "mode": 4,
            "inputs": [{"name": "samples", "type": "LATENT", "link": 3}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4], "slot_index": 0}],
            "properties": {"Node name for S&R": "StubDecode"},
            "widgets_values": [],
        },
        {
            "id": 5,
            "type": "StubSave",
            "pos": [1000, 100],
            "size": [300, 300],
            "flags": {},
            "order": 4,
            "mode": 0,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 4}],
            "outputs": [],
            "properties": {"Node name for S&R": "StubSave"},
            "widgets_values": ["fox"],
        },
        {
            "id": 6,
            "type": "StubSave",
            "pos": [1000, 450],
            "size": [300, 300],
            "flags": {"collapsed": True},
            "order": 5,
            "mode": 2,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 7}],
            "outputs": [],
            "properties": {"Node name for S&R": "StubSave"},
            "widgets_values": ["muted"],
        },
        {
            "id": 7,
            "type": "PrimitiveNode",
            "pos": [100, 300],
            "size": [210, 82],
            "flags": {},
            "order": 6,
            "mode": 0,
            "inputs": [],
            "outputs": [
                {"name": "INT", "type": "INT", "links": [6], "slot_index": 0, "widget": {"name": "steps"}}
            ],
            "properties": {"Run widget replace on values": False},
            "widgets_values": [7, "fixed"],
        },
        {
            "id": 8,
            "type": "StubDecode",
            "pos": [760, 450],
            "size": [200, 50],
            "flags": {},
            "order": 7,
            "mode": 0,
            "inputs": [{"name": "samples", "type": "LATENT", "link": None}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [7], "slot_index": 0}],
            "properties": {"Node name for S&R": "StubDecode"},
            "widgets_values": [],
        },
    ],
    "links": [
        [1, 1, 0, 2, 0, "*"],
        [2, 2, 0, 3, 0, "MODEL"],
        [3, 3, 0, 4, 0, "LATENT"],
        [4, 4, 0, 5, 0, "IMAGE"],
        [6, 7, 0, 3, 1, "INT"],
        [7, 8, 0, 6, 0, "IMAGE"],
    ],
    "groups": [
        {
            "title": "Sampling",
            "bounding": [400, 40, 340, 420],
            "color": "#3f789e",
            "font_size": 24,
            "flags": {},
        }
    ],
    "config": {},
    "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
    "version": 0.4,
}


def drop_file(page, name: str, data: bytes, mime: str) -> None:
    """Dispatch a real drop event carrying a File, as when a file is dragged from the desktop."""
    page.evaluate(
        """([name, b64, mime]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name, {type: mime}));
          document.getElementById('graph-canvas').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        [name, base64.b64encode(data).decode(), mime],
    )


def python_conversion(server, doc):
    from engine.graph.ui_format import convert_ui_workflow
    from engine.graph.workflow import Link
    from engine.server.app import RUNTIME_KEY

    registry = server.app[RUNTIME_KEY].registry
    wf = convert_ui_workflow(doc, registry)
    out = {}
    for node_id, node in wf.nodes.items():
        inputs = {k: (v.to_json() if isinstance(v, Link) else v) for k, v in node.inputs.items()}
        out[node_id] = {"class_type": node.node_type, "inputs": inputs}
    return out


def test_drop_comfy_json_round_trips_and_converts_like_the_server(page, server, artifacts):
    drop_file(page, "fox.json", json.dumps(COMFY_DOC).encode(), "application/json")
    page.wait_for_function("() => window.diffgraph.app.graph.nodes.size === 8")
    page.screenshot(path=str(artifacts / "dropped_comfy_workflow.png"))
    saved = workflow(page)
    by_id = {n["id"]: n for n in saved["nodes"]}
    for original in COMFY_DOC["nodes"]:
        mine = by_id[original["id"]]
        for key in ("type", "mode", "pos", "widgets_values", "inputs"):
            if key == "inputs" and original["type"] == "Reroute":
                continue
            assert mine.get(key, []) == original.get(key, []), (original["id"], key)
        assert [o.get("links") or [] for o in mine["outputs"]] == [
            o.get("links") or [] for o in original["outputs"]
        ]
    assert by_id[3]["title"] == "My Sampler"
    assert by_id[6]["flags"] == {"collapsed": True}
    assert sorted(link[:5] for link in saved["links"]) == sorted(link[:5] for link in COMFY_DOC["links"])
    assert saved["groups"][0]["title"] == "Sampling" and saved["groups"][0]["bounding"] == [400, 40, 340, 420]
    # The browser's API export equals the Python conversion (reroute followed, primitive inlined,
    # bypassed decode passes LATENT... which does not fit IMAGE, so the save input is dropped; muted gone).
    js = api_prompt(page)
    py = python_conversion(server, COMFY_DOC)
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in js.items()} == py
    assert js["3"]["inputs"]["steps"] == 7 and js["3"]["inputs"]["model"] == ["1", 0]
    assert "4" not in js and "6" not in js


def test_saved_workflow_reopens_identically_and_survives_reload(page):
    drop_file(page, "fox.json", json.dumps(COMFY_DOC).encode(), "application/json")
    page.wait_for_function("() => window.diffgraph.app.graph.nodes.size === 8")
    first = workflow(page)
    page.click("#save-btn")
    name = page.locator("#ask-dialog input")
    assert name.input_value() == "fox"  # the opened file's name is offered
    with page.expect_download() as info:
        name.press("Enter")
    assert info.value.suggested_filename == "fox.json"
    saved = json.loads(Path(info.value.path()).read_text())
    assert saved["nodes"] == first["nodes"] and saved["links"] == first["links"]
    page.click("#clear-btn")
    drop_file(page, "again.json", json.dumps(saved).encode(), "application/json")
    page.wait_for_function("() => window.diffgraph.app.graph.nodes.size === 8")
    assert workflow(page)["nodes"] == first["nodes"]
    page.wait_for_timeout(400)  # persistence is debounced
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert workflow(page)["nodes"] == first["nodes"]


def test_drop_png_with_embedded_workflow(page):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("workflow", json.dumps(COMFY_DOC))
    info.add_text(
        "prompt",
        json.dumps({"1": {"class_type": "StubLoader", "inputs": {"ckpt_name": "tiny_a.safetensors"}}}),
    )
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG", pnginfo=info)
    page.click("#clear-btn")
    drop_file(page, "fox.png", buf.getvalue(), "image/png")
    page.wait_for_function("() => window.diffgraph.app.graph.nodes.size === 8")
    assert workflow(page)["nodes"][2]["widgets_values"][4] == "a red fox"


def test_api_format_json_opens_as_graph(page):
    prompt = {
        "1": {"class_type": "StubLoader", "inputs": {"ckpt_name": "tiny_b.safetensors"}},
        "2": {
            "class_type": "StubSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 5,
                "steps": 3,
                "cfg": 2.5,
                "prompt": "x",
                "enabled": False,
                "sampler": "dpm_2",
            },
        },
    }
    drop_file(page, "api.json", json.dumps(prompt).encode(), "application/json")
    page.wait_for_function("() => window.diffgraph.app.graph.nodes.size === 2")
    assert api_prompt(page) == {
        k: {**v, "_meta": v.get("_meta")} if "_meta" in v else v for k, v in prompt.items()
    }
