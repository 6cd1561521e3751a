"""Workflows embedded in PNGs: load_workflow_file reads them, `diffgraph run image.png` re-runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from engine.cli import main
from engine.errors import WorkflowFormatError
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.graph.loading import load_workflow_file
from engine.runtime import build_runtime

API = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 4, "height": 3, "batch_size": 1, "color": 0x102030},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "again"}},
}

UI = {
    "nodes": [
        {
            "id": 1,
            "type": "EmptyImage",
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
            "widgets_values": [4, 3, 1, 0x102030],
        },
        {
            "id": 2,
            "type": "ImageInvert",
            "mode": 0,
            "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}],
            "widgets_values": [],
        },
        {
            "id": 3,
            "type": "SaveImage",
            "mode": 0,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
            "outputs": [],
            "widgets_values": ["from_ui"],
        },
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
    "version": 0.4,
}


def png_with(path: Path, **chunks: object) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, json.dumps(value))
    Image.new("RGB", (2, 2)).save(path, pnginfo=info)
    return path


@pytest.fixture
def runtime(tmp_path):
    return build_runtime(Folders.create(tmp_path), with_models=False, load_custom_nodes=False)


def test_png_prefers_the_api_graph_and_keeps_the_ui_graph(runtime, tmp_path):
    other_api = {
        "9": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    }
    workflow = load_workflow_file(
        png_with(tmp_path / "both.png", prompt=other_api, workflow=UI), runtime.registry
    )
    assert list(workflow.nodes) == ["9"]  # the API chunk, not the UI graph
    assert workflow.ui_document == UI  # carried along so re-saved images embed it again


def test_png_with_only_a_ui_graph_is_converted(runtime, tmp_path):
    workflow = load_workflow_file(png_with(tmp_path / "ui.png", workflow=UI), runtime.registry)
    assert workflow.to_api()["3"]["inputs"] == {"images": ["2", 0], "filename_prefix": "from_ui"}


def test_png_without_a_workflow_names_the_file(runtime, tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "photo.png")
    with pytest.raises(WorkflowFormatError, match="photo.png has no embedded workflow"):
        load_workflow_file(tmp_path / "photo.png", runtime.registry)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(WorkflowFormatError, match="broken.png"):
        load_workflow_file(tmp_path / "broken.png", runtime.registry)


def test_cli_reruns_the_graph_stored_in_a_saved_image(runtime, tmp_path, capsys):
    runtime.folders.create_directories()
    first = runtime.executor.run(parse_api_workflow(API), extra_data={"extra_pnginfo": {"workflow": UI}})
    assert first.ok, first.errors
    saved = runtime.folders.output / "again_00001_.png"
    assert saved.is_file()

    code = main(["run", str(saved), "--base-directory", str(tmp_path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rerun = runtime.folders.output / "again_00002_.png"
    assert str(rerun) in captured.out
    with Image.open(rerun) as image:
        assert image.getpixel((0, 0)) == (0xFF - 0x10, 0xFF - 0x20, 0xFF - 0x30)  # EmptyImage -> ImageInvert
        assert json.loads(image.text["prompt"]) == json.loads(json.dumps(API))
        assert json.loads(image.text["workflow"]) == UI  # the UI graph survives the round trip


def test_cli_run_of_png_without_workflow_fails_clearly(tmp_path, capsys):
    Image.new("RGB", (2, 2)).save(tmp_path / "photo.png")
    code = main(["run", str(tmp_path / "photo.png"), "--base-directory", str(tmp_path), "--quiet"])
    assert code != 0
    assert "photo.png has no embedded workflow" in capsys.readouterr().err
