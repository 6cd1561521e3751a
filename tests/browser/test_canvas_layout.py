"""widgets_values layout parity between the canvas and engine/graph/ui_widgets.py: files saved by old
ComfyUI canvases (a 2023 boolean seed toggle, a renamed sampler, LoadImage/LoadImageMask with the upload
placeholder after all required inputs) convert to the same API prompt in the browser and in Python, and
still do after the canvas saved them again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser.helpers import api_prompt, workflow
from tests.browser.test_canvas_files import python_conversion

pytestmark = [pytest.mark.browser, pytest.mark.slow]

UI_FILES = Path(__file__).parents[1] / "unit" / "engine" / "ui_files"


def load(page, doc) -> None:
    page.console.allow_response("/api/view", 404)  # LoadImage previews example.png, not in the input folder
    page.evaluate(
        "async (doc) => { const m = await import('./js/files.js'); m.loadAnyDocument(window.diffgraph.app, doc); }",
        doc,
    )


def js_conversion(page):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api_prompt(page).items()}


def values_of(doc, node_type):
    return [n.get("widgets_values") for n in doc["nodes"] if n["type"] == node_type]


@pytest.mark.parametrize(
    "name",
    [
        "2023-01_seed_toggle_sampler_prefix.json",
        "2023-04_primitive_seed_inpaint.json",
        "2024-06_euler_pp.json",
    ],
)
def test_old_files_convert_like_python_before_and_after_a_canvas_save(page, server, name):
    doc = json.loads((UI_FILES / name).read_text())
    load(page, doc)
    python = python_conversion(server, doc)
    assert js_conversion(page) == python
    saved = workflow(page)
    assert python_conversion(server, saved) == python
    load(page, saved)
    assert js_conversion(page) == python and workflow(page)["nodes"] == saved["nodes"]


def test_seed_toggle_and_upload_placeholder_are_read_and_written_as_comfyui_does(page, server):
    load(page, json.loads((UI_FILES / "2023-01_seed_toggle_sampler_prefix.json").read_text()))
    # The 2023 toggle `true` is "randomize"; the widgets after it stay aligned.
    assert values_of(workflow(page), "KSampler") == [
        [8566257, "randomize", 20, 8, "sample_euler_ancestral", "normal", 1]
    ]
    sampler = next(v for v in js_conversion(page).values() if v["class_type"] == "KSampler")["inputs"]
    assert (
        sampler["sampler_name"] == "euler_ancestral" and sampler["steps"] == 20 and sampler["seed"] == 8566257
    )

    load(page, json.loads((UI_FILES / "2023-04_primitive_seed_inpaint.json").read_text()))
    saved = workflow(page)
    assert values_of(saved, "LoadImageMask") == [["example.png", "red", "image"]]
    assert values_of(saved, "KSamplerAdvanced")[0][:4] == ["enable", 123456, "fixed", 25]
    assert values_of(saved, "PrimitiveNode") == [[123456, "fixed"]]
    mask = next(v for v in js_conversion(page).values() if v["class_type"] == "LoadImageMask")["inputs"]
    assert mask == {"image": "example.png", "channel": "red"}

    # A node the canvas creates saves the placeholder after all required inputs too.
    created = page.evaluate(
        """() => { const {app} = window.diffgraph; const n = app.addNode('LoadImageMask', [0, 0]);
        n.widget('image').value = 'x.png'; return app.graph.serialize().nodes.find((m) => m.id === n.id); }"""
    )
    assert created["widgets_values"] == ["x.png", "alpha", "image"]
    assert python_conversion(server, {"nodes": [created], "links": []})[str(created["id"])]["inputs"] == {
        "image": "x.png",
        "channel": "alpha",
    }


def test_annotated_image_name_previews_from_its_folder(page):
    page.console.allow_response("/api/view", 404)
    url = page.evaluate(
        """async () => { const {app} = window.diffgraph; const w = await import('./js/widgets.js');
        const n = app.addNode('LoadImage', [0, 0]); n.widget('image').value = 'sub/x y.png [output]';
        w.refreshInputImage(app, n); return n.imageUrls[0]; }"""
    )
    assert "filename=x+y.png" in url and "subfolder=sub" in url and "type=output" in url
