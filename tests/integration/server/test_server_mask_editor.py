"""The official frontend's mask editor against the real app: what each frontend version uploads (1.58.x:
four /upload/image layers into the input folder; 1.27.x: /upload/mask with `original_ref` into
`clipspace/`), with the browser headers it sends, store the masked image; LoadImage then returns the
painted mask (LoadImage takes the annotated names the editors write)."""

from __future__ import annotations

import io
import json
import uuid

import aiohttp
import pytest
from PIL import Image

from engine.folders import Folders
from engine.runtime import build_runtime
from engine.server.config import ServerConfig


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _form(data: bytes, filename: str, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


def _masked_image() -> Image.Image:
    """What the editor produces: the picture with the painted mask as transparency (alpha 0 = masked)."""
    image = Image.new("RGBA", (8, 8), (200, 100, 50, 255))
    image.putpixel((1, 2), (200, 100, 50, 0))
    return image


async def _load_mask(kit, client, image_value: str) -> Image.Image:
    """Runs LoadImage(image) -> MaskToImage -> SaveImage and returns the saved mask picture."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_value}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "mask"}},
    }
    prompt_id = str(uuid.uuid4())
    posted = await client.post("/prompt", json={"prompt": prompt, "prompt_id": prompt_id})
    assert posted.status == 200, await posted.text()
    entry = await kit.wait_history(client, prompt_id, timeout=30)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["3"]["images"][0]
    view = await client.get("/view", params=saved)
    return Image.open(io.BytesIO(await view.read())).convert("L")


async def _save_like_the_editor(client, tmp_path, version: str) -> tuple[str, str]:
    """Uploads what the editor of `version` uploads, with its headers; (LoadImage widget value, stored
    file relative to the input folder)."""
    origin = f"http://{client.host}:{client.port}"
    headers = {"Origin": origin, "Comfy-User": "", "User-Agent": "Mozilla/5.0"}
    if version == "1.58":
        names = [f"clipspace-{kind}-1764.png" for kind in ("mask", "paint", "painted", "painted-masked")]
        for name in names:
            form = _form(_png(_masked_image()), name, type="input")
            uploaded = await client.post("/upload/image", data=form, headers=headers)
            assert uploaded.status == 200
            assert await uploaded.json() == {"name": name, "subfolder": "", "type": "input"}
        return f"{names[-1]} [input]", names[-1]
    original = Image.new("RGB", (8, 8), (200, 100, 50))
    (tmp_path / "input" / "clipspace").mkdir()
    original.save(tmp_path / "input" / "clipspace" / "clipspace-1764.png")
    ref = {"filename": "clipspace-1764.png", "subfolder": "clipspace", "type": "input"}
    form = _form(
        _png(_masked_image()),
        "clipspace-mask-1764.png",
        type="input",
        subfolder="clipspace",
        original_ref=json.dumps(ref),
    )
    uploaded = await client.post("/upload/mask", data=form, headers=headers)
    assert uploaded.status == 200
    answer = await uploaded.json()
    assert answer == {"name": "clipspace-mask-1764.png", "subfolder": "clipspace", "type": "input"}
    return "clipspace/clipspace-mask-1764.png [input]", "clipspace/clipspace-mask-1764.png"


def _runtime(tmp_path):
    folders = Folders.create(tmp_path)
    folders.create_directories()
    return build_runtime(folders, with_models=False)  # the built-in nodes, no model services


@pytest.mark.parametrize("version", ["1.58", "1.27"])
def test_mask_editor_uploads_store_the_masked_image(kit, tmp_path, version):
    async def scenario() -> None:
        client = await kit.start_client(_runtime(tmp_path), ServerConfig(store_path=tmp_path / "q.sqlite3"))
        try:
            _, stored = await _save_like_the_editor(client, tmp_path, version)
            with Image.open(tmp_path / "input" / stored) as image:
                assert image.mode == "RGBA"
                assert image.getpixel((1, 2))[3] == 0 and image.getpixel((0, 0))[3] == 255
                assert image.getpixel((0, 0))[:3] == (200, 100, 50)
        finally:
            await client.close()

    kit.run(scenario)


# Both editors write the annotated name ("x.png [input]") into LoadImage's widget, which LoadImage
# accepts as ComfyUI's does (folder_paths.exists_annotated_filepath).
@pytest.mark.parametrize("version", ["1.58", "1.27"])
def test_load_image_returns_the_mask_the_editor_saved(kit, tmp_path, version):
    async def scenario() -> None:
        client = await kit.start_client(_runtime(tmp_path), ServerConfig(store_path=tmp_path / "q.sqlite3"))
        try:
            value, _ = await _save_like_the_editor(client, tmp_path, version)
            mask = await _load_mask(kit, client, value)
            # ComfyUI's LoadImage: mask = 1 - alpha, so the painted pixel is white and the rest black
            assert mask.getpixel((1, 2)) == 255 and mask.getpixel((0, 0)) == 0
        finally:
            await client.close()

    kit.run(scenario)
