"""engine.imageio: reading image files into arrays, PNG text chunks, ComfyUI's save naming."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from engine import imageio
from engine.errors import UnsafePathError


def write_rgba(path: Path, alpha_value: int = 255) -> np.ndarray:
    pixels = np.zeros((6, 4, 4), dtype=np.uint8)
    pixels[..., 0] = np.arange(4)[None, :] * 60  # red ramps along x
    pixels[..., 1] = np.arange(6)[:, None] * 40  # green ramps along y
    pixels[..., 2] = 200
    pixels[..., 3] = alpha_value
    pixels[0, 0, 3] = 0  # one fully transparent pixel
    Image.fromarray(pixels, "RGBA").save(path)
    return pixels


def test_rgb_file_reads_as_one_frame_in_0_1_with_zero_mask(tmp_path):
    array = np.array([[[0, 128, 255], [255, 0, 0]]], dtype=np.uint8)  # 1x2 image
    Image.fromarray(array, "RGB").save(tmp_path / "a.png")
    loaded = imageio.read_image(tmp_path / "a.png")
    assert loaded.pixels.shape == (1, 1, 2, 3) and loaded.pixels.dtype == np.float32
    np.testing.assert_allclose(loaded.pixels[0, 0, 0], [0.0, 128 / 255, 1.0], atol=1e-6)
    assert loaded.masks.shape == (1, 1, 2) and not loaded.masks.any()
    assert not loaded.has_alpha


def test_alpha_becomes_inverted_mask(tmp_path):
    source = write_rgba(tmp_path / "a.png", alpha_value=64)
    loaded = imageio.read_image(tmp_path / "a.png")
    assert loaded.has_alpha
    assert loaded.masks.shape == (1, 6, 4)
    assert loaded.masks[0, 0, 0] == pytest.approx(1.0)  # transparent -> masked
    assert loaded.masks[0, 1, 1] == pytest.approx(1 - 64 / 255)
    np.testing.assert_allclose(loaded.pixels[0], source[..., :3] / 255.0, atol=1e-6)


def test_palette_transparency_gives_a_mask(tmp_path):
    image = Image.new("P", (3, 2), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    image.putpixel((2, 1), 0)
    image.save(tmp_path / "p.png", transparency=0)
    loaded = imageio.read_image(tmp_path / "p.png")
    assert loaded.masks[0, 1, 2] == 1.0 and loaded.masks[0, 0, 0] == 0.0
    np.testing.assert_allclose(loaded.pixels[0, 0, 0], [1.0, 0.0, 0.0])


def test_exif_orientation_is_applied(tmp_path):
    # A 4 wide x 2 high image with orientation 6 ("rotate 90° clockwise to display") shows as 2x4.
    array = np.zeros((2, 4, 3), dtype=np.uint8)
    array[0, 0] = [255, 0, 0]  # top-left red
    image = Image.fromarray(array, "RGB")
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    loaded = imageio.read_image(tmp_path / "o.jpg")
    assert loaded.pixels.shape == (1, 4, 2, 3)
    # After a clockwise turn the old top-left corner is at the top-right.
    assert loaded.pixels[0, 0, 1, 0] > 0.8 and loaded.pixels[0, 0, 0, 0] < 0.2


def test_multi_frame_gif_is_a_batch_and_odd_sized_frames_are_skipped(tmp_path):
    frames = [Image.new("RGB", (5, 3), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    loaded = imageio.read_image(tmp_path / "anim.gif")
    assert loaded.frame_count == 3 and loaded.pixels.shape == (3, 3, 5, 3)
    assert loaded.pixels[1, 0, 0, 1] > 0.9 and loaded.pixels[2, 0, 0, 2] > 0.9

    tiff = [
        Image.new("RGB", (4, 4), "red"),
        Image.new("RGB", (2, 2), "green"),
        Image.new("RGB", (4, 4), "blue"),
    ]
    tiff[0].save(tmp_path / "multi.tiff", save_all=True, append_images=tiff[1:])
    loaded = imageio.read_image(tmp_path / "multi.tiff")
    assert loaded.frame_count == 2  # the 2x2 frame cannot join a 4x4 batch
    assert loaded.pixels[1, 0, 0, 2] > 0.9


def test_sixteen_bit_png_keeps_precision(tmp_path):
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    loaded = imageio.read_image(tmp_path / "deep.png")
    np.testing.assert_allclose(loaded.pixels[0, 0, :, 0], [0.0, 1000 / 65535, 1.0], atol=1e-6)
    assert loaded.pixels.shape == (1, 1, 3, 3)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(imageio.ImageFileError, match="broken.png"):
        imageio.read_image(tmp_path / "broken.png")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, format="PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[:60])
    with pytest.raises(imageio.ImageFileError, match="truncated.png"):
        imageio.read_image(tmp_path / "truncated.png")
    (tmp_path / "notes.png").write_text("just text")
    with pytest.raises(imageio.ImageFileError, match="notes.png"):
        imageio.read_image(tmp_path / "notes.png")
    with pytest.raises(imageio.ImageFileError, match="absent.png.*does not exist"):
        imageio.read_image(tmp_path / "absent.png")


def test_read_channel(tmp_path):
    source = write_rgba(tmp_path / "a.png", alpha_value=255)
    red = imageio.read_image_channel(tmp_path / "a.png", "red")
    np.testing.assert_allclose(red, source[..., 0] / 255.0, atol=1e-6)
    alpha = imageio.read_image_channel(tmp_path / "a.png", "alpha")
    assert alpha[0, 0] == 1.0 and alpha[2, 2] == 0.0
    Image.new("RGB", (3, 3), "white").save(tmp_path / "rgb.png")
    assert not imageio.read_image_channel(tmp_path / "rgb.png", "alpha").any()
    with pytest.raises(ValueError, match="unknown channel 'purple'"):
        imageio.read_image_channel(tmp_path / "a.png", "purple")


def test_save_png_writes_comfyui_chunks_that_read_back(tmp_path):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}
    ui = {"nodes": [], "links": [], "version": 0.4}
    chunks = imageio.png_text_chunks(prompt, {"workflow": ui, "note": "hi"})
    assert chunks == {"prompt": json.dumps(prompt), "workflow": json.dumps(ui), "note": json.dumps("hi")}
    pixels = np.full((2, 3, 3), 0.5, dtype=np.float32)
    imageio.save_png(tmp_path / "x.png", pixels, chunks)
    with Image.open(tmp_path / "x.png") as image:
        assert image.text["prompt"] == json.dumps(prompt)  # exactly ComfyUI's chunk text
        assert np.asarray(image).shape == (2, 3, 3) and np.asarray(image)[0, 0, 0] == 127  # 0.5*255 truncated
    meta = imageio.png_metadata(tmp_path / "x.png")
    assert meta["prompt"] == prompt and meta["workflow"] == ui and meta["note"] == "hi"
    assert imageio.embedded_workflow(tmp_path / "x.png") == prompt  # API graph preferred


def test_embedded_workflow_falls_back_to_ui_and_errors_without_one(tmp_path):
    ui = {"nodes": [{"id": 1}], "links": []}
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", json.dumps(ui))
    Image.new("RGB", (2, 2)).save(tmp_path / "ui.png", pnginfo=info)
    assert imageio.embedded_workflow(tmp_path / "ui.png") == ui
    Image.new("RGB", (2, 2)).save(tmp_path / "plain.png")
    with pytest.raises(imageio.ImageFileError, match="plain.png has no embedded workflow"):
        imageio.embedded_workflow(tmp_path / "plain.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "photo.jpg")
    with pytest.raises(imageio.ImageFileError, match="not a PNG"):
        imageio.png_metadata(tmp_path / "photo.jpg")


def test_save_path_counter_continues_after_existing_files(tmp_path):
    first = imageio.save_image_path("ComfyUI", tmp_path)
    assert (first.counter, first.subfolder, first.file_name()) == (1, "", "ComfyUI_00001_.png")
    for name in ("ComfyUI_00001_.png", "ComfyUI_00007_.png", "ComfyUI_00009.png", "Other_00020_.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "ComfyUI_temp_abcde_00030_.png").write_bytes(b"")
    target = imageio.save_image_path("ComfyUI", tmp_path)
    # Highest "ComfyUI_<n>_" is 7: other prefixes, and names without the closing "_", do not count.
    assert target.counter == 8
    assert target.file_name(2) == "ComfyUI_00010_.png"


def test_save_path_subfolders_are_confined_to_the_root(tmp_path):
    target = imageio.save_image_path("portraits/day1/img", tmp_path)
    assert target.subfolder == "portraits/day1" and target.folder == (tmp_path / "portraits/day1").resolve()
    assert target.folder.is_dir() and target.file_name() == "img_00001_.png"
    inside = imageio.save_image_path("a/../b/x", tmp_path)
    assert inside.subfolder == "b"
    for bad in ("../escape", "a/../../escape", "/etc/passwd"):
        with pytest.raises(UnsafePathError):
            imageio.save_image_path(bad, tmp_path)
    assert not (tmp_path.parent / "escape").exists()


def test_prefix_variables(tmp_path):
    now = time.struct_time((2024, 3, 7, 9, 5, 2, 0, 67, 0))
    assert imageio.expand_prefix("img_%width%x%height%", 640, 480, now) == "img_640x480"
    assert (
        imageio.expand_prefix("%year%-%month%-%day%/%hour%%minute%%second%", now=now) == "2024-03-07/090502"
    )
    assert imageio.expand_prefix("%date:yyyy-MM-dd%/x_%date:hhmmss%", now=now) == "2024-03-07/x_090502"
    assert imageio.expand_prefix("%date:d.M.yy%", now=now) == "7.3.24"
    target = imageio.save_image_path("%width%/pic", tmp_path, width=64, height=32)
    assert target.subfolder == "64"
