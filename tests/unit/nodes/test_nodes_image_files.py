"""LoadImageOutput, MaskPreview and the animated savers (WebP, APNG) on real folders and files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from engine.folders import Folders
from tests.unit.nodes.node_support import builtin, node_context

IO, AN = builtin("image_io"), builtin("animation")
PROMPT = {"1": {"class_type": "SaveAnimatedPNG", "inputs": {}}}
WORKFLOW = {"workflow": {"nodes": [], "version": 0.4}}


@pytest.fixture
def context(tmp_path):
    folders = Folders.create(tmp_path)
    folders.create_directories()
    return node_context(folders=folders)[0]


def frames(count: int = 3) -> torch.Tensor:
    return torch.stack([torch.full((4, 6, 3), i / count) for i in range(count)])


def test_load_image_output_reads_the_output_folder(context):
    pixels = np.zeros((3, 5, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 3] = 255, 128
    Image.fromarray(pixels, "RGBA").save(context.folders.output / "result.png")
    image, mask = IO.load_image_output("result.png", context)
    assert image.shape == (1, 3, 5, 3) and image[..., 0].min() == 1.0
    torch.testing.assert_close(mask, torch.full((1, 3, 5), 1 - 128 / 255))
    Image.fromarray(pixels, "RGBA").save(context.folders.input / "in.png")
    image2, _ = IO.load_image_output("in.png [input]", context)  # an annotated name picks its folder
    assert torch.equal(image2, image)
    before = IO.load_image_output.fingerprint("result.png", context)
    Image.fromarray(pixels[..., :3], "RGB").save(context.folders.output / "result.png")
    assert IO.load_image_output.fingerprint("result.png", context) != before  # a changed file re-runs


def test_mask_preview_writes_grey_images_to_temp(context):
    masks = torch.stack([torch.zeros(2, 3), torch.ones(2, 3)])
    out = IO.mask_preview(masks, context)
    assert [r["type"] for r in out.ui["images"]] == ["temp", "temp"]
    second = np.asarray(Image.open(context.folders.temp / out.ui["images"][1]["filename"]))
    assert second.shape == (2, 3, 3) and second.min() == 255


def test_save_animated_webp_frames_timing_and_exif(context):
    out = AN.save_animated_webp(frames(3), "anim/clip", 4.0, True, 80, "fastest", context, PROMPT, WORKFLOW)
    assert out.ui["animated"] == (True,)
    (entry,) = out.ui["images"]
    assert entry == {"filename": "clip_00001_.webp", "subfolder": "anim", "type": "output"}
    with Image.open(context.folders.output / "anim" / "clip_00001_.webp") as picture:
        picture.load()
        assert picture.n_frames == 3 and picture.info["duration"] == 250
        exif = picture.getexif()
        picture.seek(2)
        assert np.asarray(picture.convert("RGB"))[0, 0].tolist() == [170, 170, 170]  # 2/3 · 255, lossless
    assert json.loads(exif[0x0110].removeprefix("prompt:")) == PROMPT
    assert json.loads(exif[0x010F].removeprefix("workflow:")) == WORKFLOW["workflow"]
    single = AN.save_animated_webp(frames(1), "anim/clip", 4.0, False, 50, "default", context)
    assert single.ui["animated"] == (False,) and single.ui["images"][0]["filename"] == "clip_00002_.webp"


def png_chunks(path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()[8:]
    chunks = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        chunks.append((data[4:8], data[8 : 8 + length]))
        data = data[12 + length :]
    return chunks


def test_save_animated_png_is_an_apng_with_comf_chunks_after_the_image(context):
    out = AN.save_animated_png(frames(3), "ComfyUI", 10.0, 1, context, PROMPT, WORKFLOW)
    assert out.ui == {
        "images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}],
        "animated": (True,),
    }
    path = context.folders.output / "ComfyUI_00001_.png"
    with Image.open(path) as picture:
        assert picture.n_frames == 3 and picture.info["duration"] == 100
    chunks = png_chunks(path)
    names = [name for name, _ in chunks]
    comf = [body for name, body in chunks if name == b"comf"]
    assert names.index(b"comf") > names.index(b"IDAT")
    assert comf[0] == b"prompt\0" + json.dumps(PROMPT).encode("latin-1")
    assert comf[1] == b"workflow\0" + json.dumps(WORKFLOW["workflow"]).encode("latin-1")
