"""LoadImage / LoadImageMask / SaveImage / PreviewImage through the real executor and folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import WorkflowValidationError
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.runtime import Runtime, build_runtime


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    folders = Folders.create(tmp_path)
    folders.create_directories()
    return build_runtime(folders, with_models=False, load_custom_nodes=False)


def run(runtime: Runtime, graph: dict, extra_data: dict | None = None):
    return runtime.executor.run(parse_api_workflow(graph), extra_data=extra_data)


def write_rgba(path: Path) -> np.ndarray:
    pixels = np.zeros((3, 5, 4), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = 255
    pixels[1, 2, 3] = 0  # transparent pixel
    pixels[2, 4, 3] = 128
    Image.fromarray(pixels, "RGBA").save(path)
    return pixels


LOAD_AND_SAVE = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}},
}


def test_load_image_gives_image_and_inverted_alpha_mask(runtime):
    write_rgba(runtime.folders.input / "photo.png")
    result = run(runtime, LOAD_AND_SAVE)
    assert result.ok, result.errors
    image, mask = result.output("1", 0), result.output("1", 1)
    assert image.shape == (1, 3, 5, 3) and image.dtype == torch.float32
    assert image[..., 0].sub(200 / 255).abs().max() < 1e-6 and image[..., 1:].eq(0).all()
    assert mask.shape == (1, 3, 5)
    assert mask[0, 1, 2] == 1.0 and mask[0, 0, 0] == 0.0
    assert mask[0, 2, 4].item() == pytest.approx(1 - 128 / 255)


def test_load_image_multi_frame_is_a_batch(runtime):
    frames = [Image.new("RGB", (4, 4), c) for c in ["red", "lime", "blue", "white"]]
    frames[0].save(runtime.folders.input / "anim.gif", save_all=True, append_images=frames[1:])
    result = run(
        runtime,
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "anim.gif"}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        },
    )
    assert result.ok, result.errors
    image = result.output("1", 0)
    assert image.shape == (4, 4, 4, 3)
    assert image[1, 0, 0, 1] > 0.9 and image[3].min() > 0.9
    # No alpha: ComfyUI's mask is 64x64 zeros per frame, whatever the picture's size.
    mask = result.output("1", 1)
    assert mask.shape == (4, 64, 64) and not mask.any()
    previews = result.ui_outputs["2"]["images"]
    assert len(previews) == 4 and all(p["type"] == "temp" for p in previews)
    assert all((runtime.folders.temp / p["filename"]).is_file() for p in previews)
    assert previews[0]["filename"].startswith("ComfyUI_temp_") and previews[3]["filename"].endswith(
        "_00004_.png"
    )


def test_load_image_mask_channels(runtime):
    source = write_rgba(runtime.folders.input / "m.png")
    graph = {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "alpha"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "red"}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["4", 0]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    result = run(runtime, graph)
    assert result.ok, result.errors
    alpha, red = result.output("1"), result.output("2")
    assert alpha.shape == (1, 3, 5) and alpha[0, 1, 2] == 1.0 and alpha[0, 0, 0] == 0.0
    assert torch.allclose(red[0], torch.from_numpy(source[..., 0] / 255.0).float())


def test_missing_input_file_is_a_validation_error_listing_choices(runtime):
    write_rgba(runtime.folders.input / "photo.png")
    graph = {**LOAD_AND_SAVE, "1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}}}
    with pytest.raises(WorkflowValidationError) as info:
        run(runtime, graph)
    text = str(info.value)
    assert "nope.png" in text and "photo.png" in text and "LoadImage" in text


def test_corrupt_input_image_fails_the_node_naming_the_file(runtime):
    (runtime.folders.input / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    result = run(
        runtime, {**LOAD_AND_SAVE, "1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}}}
    )
    assert not result.ok
    (error,) = result.errors
    assert error.node_id == "1" and "broken.png" in str(error)
    assert not any(runtime.folders.output.iterdir())


def test_changed_input_file_reruns_the_loader(runtime):
    path = runtime.folders.input / "photo.png"
    Image.new("RGB", (2, 2), "black").save(path)
    first = run(runtime, LOAD_AND_SAVE)
    assert first.output("1").max() == 0
    Image.new("RGB", (2, 2), "white").save(path)
    second = run(runtime, LOAD_AND_SAVE)
    assert "1" in second.executed and second.output("1").min() == 1


def test_unchanged_input_file_is_served_from_the_cache(runtime):
    Image.new("RGB", (2, 2), "black").save(runtime.folders.input / "photo.png")
    run(runtime, LOAD_AND_SAVE)
    again = run(runtime, LOAD_AND_SAVE)
    assert again.executed == []  # the SaveImage result is reused, so LoadImage need not even be looked up
    # Replacing the file (same name) changes the fingerprint, so the node runs again.
    Image.new("RGB", (2, 2), "white").save(runtime.folders.input / "photo.png")
    third = run(runtime, LOAD_AND_SAVE)
    assert "1" in third.executed


SAVE_GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 6, "height": 4, "batch_size": 2, "color": 0x336699},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "run/pic"}},
}


def test_save_image_writes_pngs_with_prompt_and_workflow_and_counts_on(runtime):
    ui = {"nodes": [], "links": [], "version": 0.4, "extra": {"note": 1}}
    result = run(runtime, SAVE_GRAPH, extra_data={"extra_pnginfo": {"workflow": ui}})
    assert result.ok, result.errors
    images = result.ui_outputs["2"]["images"]
    assert images == [
        {"filename": "pic_00001_.png", "subfolder": "run", "type": "output"},
        {"filename": "pic_00002_.png", "subfolder": "run", "type": "output"},
    ]
    saved = runtime.folders.output / "run" / "pic_00001_.png"
    with Image.open(saved) as image:
        assert image.size == (6, 4) and image.mode == "RGB"
        assert image.getpixel((5, 3)) == (0x33, 0x66, 0x99)
        prompt = json.loads(image.text["prompt"])
        workflow = json.loads(image.text["workflow"])
    assert prompt["2"]["class_type"] == "SaveImage" and prompt["1"]["inputs"]["color"] == 0x336699
    assert prompt["2"]["inputs"]["images"] == ["1", 0]
    assert workflow == ui
    # A second run with a changed colour continues the counter instead of overwriting.
    graph = json.loads(json.dumps(SAVE_GRAPH))
    graph["1"]["inputs"]["color"] = 0
    result = run(runtime, graph)
    assert [i["filename"] for i in result.ui_outputs["2"]["images"]] == ["pic_00003_.png", "pic_00004_.png"]
    with Image.open(runtime.folders.output / "run" / "pic_00003_.png") as image:
        assert "workflow" not in image.text and "prompt" in image.text


def test_save_image_refuses_prefix_outside_output(runtime, tmp_path):
    graph = json.loads(json.dumps(SAVE_GRAPH))
    graph["2"]["inputs"]["filename_prefix"] = "../../escaped"
    result = run(runtime, graph)
    assert not result.ok and "outside the output folder" in str(result.errors[0])
    assert not list(tmp_path.parent.glob("escaped*"))


def test_image_upload_widget_and_choices_in_schema(runtime):
    Image.new("RGB", (2, 2)).save(runtime.folders.input / "b.png")
    Image.new("RGB", (2, 2)).save(runtime.folders.input / "a.jpg")
    (runtime.folders.input / "notes.txt").write_text("x")
    schema = runtime.registry.object_info()["LoadImage"]
    spec = schema["input"]["required"]["image"]
    assert spec[0] == ["a.jpg", "b.png"]  # image files only, refreshed on every schema request
    assert spec[1]["image_upload"] is True
    assert schema["output"] == ["IMAGE", "MASK"] and schema["output_node"] is False
    save = runtime.registry.object_info()["SaveImage"]
    assert save["output_node"] is True and save["output"] == []
    assert save["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"


def test_a_mask_reaching_save_image_through_a_wildcard_node_is_saved_as_greyscale(tmp_path):
    """ComfyUI saves a (batch, height, width) tensor as greyscale PNGs; packs route masks there via "*"."""
    pack = tmp_path / "custom_nodes" / "anything_pack"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(
        "import torch\n"
        "class AnyMask:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {}}\n"
        "    RETURN_TYPES = ('*',)\n"
        "    FUNCTION = 'make'\n"
        "    def make(self):\n"
        "        mask = torch.zeros((1, 4, 6))\n"
        "        mask[0, 1, 2] = 1.0\n"
        "        return (mask,)\n"
        "NODE_CLASS_MAPPINGS = {'AnyMask': AnyMask}\n"
    )
    folders = Folders.create(tmp_path)
    folders.custom_nodes = [tmp_path / "custom_nodes"]
    runtime = build_runtime(folders, with_models=False)
    graph = {
        "1": {"class_type": "AnyMask", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "mask"}},
    }
    result = run(runtime, graph)
    assert result.ok, result.errors
    saved = result.ui_outputs["2"]["images"][0]
    with Image.open(runtime.folders.output / saved["filename"]) as image:
        assert image.mode == "L" and image.size == (6, 4)
        assert image.getpixel((2, 1)) == 255 and image.getpixel((0, 0)) == 0
