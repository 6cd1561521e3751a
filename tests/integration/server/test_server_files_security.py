"""Files and safety: /view and uploads refuse every traversal attempt, non-images and oversized bodies;
the mask upload merges into the original's alpha; cross-site requests, foreign Host names and missing
tokens are refused with clear 4xx — and the server keeps serving after each."""

from __future__ import annotations

import io
import os

import aiohttp
from PIL import Image

from engine.server.config import ServerConfig


def _png(color=(10, 20, 30), size=(8, 8), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _form(data: bytes, filename: str, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


VIEW_ATTACKS = [
    {"filename": "../secret.txt"},
    {"filename": "..%2Fsecret.txt"},
    {"filename": "%2e%2e/secret.txt"},
    {"filename": "/etc/passwd"},
    {"filename": "..\\secret.txt"},
    {"filename": "secret.txt\x00.png"},
    {"filename": "a.png", "subfolder": ".."},
    {"filename": "a.png", "subfolder": "../.."},
    {"filename": "a.png", "subfolder": "/etc"},
    {"filename": "a.png", "subfolder": "sub/../../"},
    {"filename": "a.png", "subfolder": "..%5c"},
    {"filename": "C:\\Windows\\win.ini"},
    {"filename": "passwd", "subfolder": "%2e%2e%2f%2e%2e%2fetc"},
    {"filename": "a.png", "type": "models"},
    {"filename": "secret.txt [input]/../../x"},
    {"filename": "escape.txt"},  # a symlink inside output/ pointing outside
]


def test_view_and_upload_refuse_traversal_and_bad_files(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    (tmp_path / "secret.txt").write_text("top secret")
    (tmp_path / "output").mkdir(exist_ok=True)
    os.symlink(tmp_path / "secret.txt", tmp_path / "output" / "escape.txt")

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(max_upload_bytes=64 * 1024))
        try:
            for params in VIEW_ATTACKS:
                params = {"type": "output", **params}
                response = await client.get("/view", params=params)
                body = await response.text()
                assert 400 <= response.status < 500, (params, response.status)
                assert "top secret" not in body
                assert (await client.get("/prompt")).status == 200  # still serving

            # a real upload, then the duplicate rules
            good = await client.post("/upload/image", data=_form(_png(), "photo.png"))
            assert good.status == 200
            assert await good.json() == {"name": "photo.png", "subfolder": "", "type": "input"}
            same = await (await client.post("/upload/image", data=_form(_png(), "photo.png"))).json()
            assert same["name"] == "photo.png"  # identical content: reused
            other = await (
                await client.post("/upload/image", data=_form(_png((1, 2, 3)), "photo.png"))
            ).json()
            assert other["name"] == "photo (1).png"
            replaced = await client.post(
                "/upload/image", data=_form(_png((4, 5, 6)), "photo.png", overwrite="true")
            )
            assert (await replaced.json())["name"] == "photo.png"
            with Image.open(tmp_path / "input" / "photo.png") as img:
                assert img.getpixel((0, 0)) == (4, 5, 6)
            nested = await (
                await client.post("/upload/image", data=_form(_png(), "n.png", subfolder="a/b"))
            ).json()
            assert nested == {"name": "n.png", "subfolder": "a/b", "type": "input"}
            assert (tmp_path / "input" / "a" / "b" / "n.png").is_file()

            # names are sanitised to a base name inside input/
            sneaky = await (await client.post("/upload/image", data=_form(_png(), "../../evil.png"))).json()
            assert sneaky["name"] == "evil.png" and (tmp_path / "input" / "evil.png").is_file()
            assert not (tmp_path.parent / "evil.png").exists()
            renamed = await (await client.post("/upload/image", data=_form(_png(), "page.html"))).json()
            assert renamed["name"] == "page.html.png"

            for fields in (
                {"subfolder": "../x"},
                {"subfolder": "/tmp"},
                {"subfolder": "a\\..\\.."},
                {"type": "models"},
            ):
                refused = await client.post("/upload/image", data=_form(_png(), "x.png", **fields))
                assert refused.status == 400, fields
            not_image = await client.post("/upload/image", data=_form(b"#!/bin/sh\necho pwned\n", "x.png"))
            assert (
                not_image.status == 415
                and "not a readable image" in (await not_image.json())["error"]["message"]
            )
            truncated = await client.post("/upload/image", data=_form(_png()[:40], "t.png"))
            assert truncated.status == 415
            big = await client.post("/upload/image", data=_form(os.urandom(200 * 1024), "big.png"))
            assert big.status == 413 and "limit" in (await big.json())["error"]["message"]
            no_file = await client.post("/upload/image", data={"subfolder": ""})
            assert no_file.status == 400
            assert (await client.get("/prompt")).status == 200

            # mask upload: the original's RGB with the mask's alpha, metadata kept
            original = Image.new("RGB", (8, 8), (200, 100, 50))
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            info.add_text("workflow", '{"nodes": []}')
            original.save(tmp_path / "input" / "orig.png", pnginfo=info)
            mask = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
            mask.putpixel((1, 2), (0, 0, 0, 255))
            buffer = io.BytesIO()
            mask.save(buffer, format="PNG")
            ref = '{"filename": "orig.png", "subfolder": "", "type": "input"}'
            merged = await client.post(
                "/upload/mask", data=_form(buffer.getvalue(), "clipspace-mask.png", original_ref=ref)
            )
            assert merged.status == 200
            name = (await merged.json())["name"]
            with Image.open(tmp_path / "input" / name) as result:
                assert result.mode == "RGBA"
                assert result.getpixel((1, 2)) == (200, 100, 50, 255)
                assert result.getpixel((0, 0)) == (200, 100, 50, 0)
                assert result.text["workflow"] == '{"nodes": []}'
            bad_ref = '{"filename": "../secret.txt", "type": "input"}'
            refused = await client.post(
                "/upload/mask", data=_form(buffer.getvalue(), "m.png", original_ref=bad_ref)
            )
            assert refused.status == 400
            missing = await client.post(
                "/upload/mask",
                data=_form(
                    buffer.getvalue(), "m.png", original_ref='{"filename": "nope.png", "type": "input"}'
                ),
            )
            assert missing.status == 404

            # /view of an input file, and a converted preview
            shown = await client.get(
                "/view", params={"filename": "orig.png", "type": "input", "preview": "jpeg;80"}
            )
            assert shown.status == 200 and shown.content_type == "image/jpeg"
            assert (await shown.read())[:3] == b"\xff\xd8\xff"
            annotated = await client.get("/view", params={"filename": "orig.png [input]"})
            assert annotated.status == 200
        finally:
            await client.close()

    kit.run(scenario)


def test_cross_site_requests_and_rebinding_are_refused(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    prompt = {
        "prompt": {
            "1": {"class_type": "StubConst", "inputs": {"value": 1}},
            "2": {"class_type": "StubSink", "inputs": {"value": ["1", 0]}},
        }
    }

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(cors_origin="https://app.example"))
        try:
            host = f"127.0.0.1:{client.port}"
            evil = await client.post("/prompt", json=prompt, headers={"Origin": "https://evil.example"})
            assert evil.status == 403 and (await evil.json())["error"]["type"] == "cross_site_request"
            null_origin = await client.post("/interrupt", json={}, headers={"Origin": "null"})
            assert null_origin.status == 403
            fetch_meta = await client.post(
                "/queue", json={"clear": True}, headers={"Sec-Fetch-Site": "cross-site"}
            )
            assert fetch_meta.status == 403
            other_port = await client.post("/free", json={}, headers={"Origin": "http://127.0.0.1:1"})
            assert other_port.status == 403
            # a browser form post (simple content type) is refused even from our own origin
            form = await client.post(
                "/prompt",
                data='{"prompt": {}}',
                headers={
                    "Origin": f"http://{host}",
                    "Content-Type": "text/plain",
                    "User-Agent": "Mozilla/5.0",
                },
            )
            assert form.status == 415
            urlencoded = await client.post(
                "/history",
                data="clear=true",
                headers={"Content-Type": "application/x-www-form-urlencoded", "Referer": "http://x/"},
            )
            assert urlencoded.status == 415
            # ...but ComfyUI's urllib example (form content type, no browser headers) works unchanged
            import json as _json

            scripted = await client.post(
                "/prompt",
                data=_json.dumps(prompt).encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "User-Agent": "Python-urllib/3.11",
                },
            )
            assert scripted.status == 200
            same_origin = await client.post("/prompt", json=prompt, headers={"Origin": f"http://{host}"})
            assert same_origin.status == 200
            # DNS rebinding: a foreign Host name is refused on loopback
            rebound = await client.get("/object_info", headers={"Host": f"evil.example:{client.port}"})
            assert rebound.status == 403 and (await rebound.json())["error"]["type"] == "host_not_allowed"
            assert (await client.get("/prompt", headers={"Host": f"localhost:{client.port}"})).status == 200
            # cross-site websocket upgrade
            try:
                ws = await client.ws_connect("/ws", headers={"Origin": "https://evil.example"})
                await ws.close()
                raise AssertionError("cross-site websocket was accepted")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 403
            # the one configured CORS origin is allowed and gets the header; pre-flight answered
            cors = await client.post("/prompt", json=prompt, headers={"Origin": "https://app.example"})
            assert cors.status == 200 and cors.headers["Access-Control-Allow-Origin"] == "https://app.example"
            preflight = await client.options("/prompt", headers={"Origin": "https://app.example"})
            assert preflight.status == 200
            assert (await client.get("/prompt")).status == 200
        finally:
            await client.close()

    kit.run(scenario)


def test_access_token_beyond_loopback(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    token = "s3cret-token-value"
    # Listening on all interfaces (the test server itself stays on loopback): the token is required.
    config = ServerConfig(host="0.0.0.0", access_token=token)

    async def scenario() -> None:
        client = await kit.start_client(runtime, config)
        try:
            for method, path in (
                ("GET", "/object_info"),
                ("GET", "/view?filename=a.png"),
                ("POST", "/prompt"),
                ("GET", "/"),
                ("GET", "/api/queue"),
            ):
                response = await client.request(method, path)
                assert response.status == 401, path
                assert "access token" in (await response.json())["error"]["message"]
            wrong = await client.get("/object_info", headers={"Authorization": "Bearer nope"})
            assert wrong.status == 401
            try:
                await client.ws_connect("/ws")
                raise AssertionError("websocket without a token was accepted")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 401
            bearer = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/object_info", headers=bearer)).status == 200
            ws = await client.ws_connect(f"/ws?clientId=t&token={token}")
            assert (await ws.receive_json(timeout=5))["type"] == "status"
            await ws.close()
            # a token in the query string is not accepted for POSTs
            assert (await client.post(f"/interrupt?token={token}", json={})).status == 401
            # login step: /?token= sets a same-site cookie and redirects; the cookie then authenticates
            login = await client.get(f"/?token={token}", allow_redirects=False)
            assert login.status == 302 and login.headers["Location"] == "/"
            cookie = login.cookies["diffgraph_token"]
            assert cookie.value == token and cookie["httponly"] and cookie["samesite"] == "Strict"
            with_cookie = await client.get("/prompt", headers={"Cookie": f"diffgraph_token={token}"})
            assert with_cookie.status == 200
        finally:
            await client.close()

    kit.run(scenario)


def _noise_png(seed: int) -> bytes:
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (384, 384, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def test_concurrent_uploads_of_one_name_keep_every_file(kit, tmp_path):
    """Uploads are checked and written off the event loop, several at once: two uploads of one name must
    never both pick the same free name (one would overwrite the other)."""
    import asyncio

    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            # noise images large enough that the duplicate checks (reading earlier files) overlap
            images = [_noise_png(seed) for seed in range(16)]
            responses = await asyncio.gather(
                *(client.post("/upload/image", data=_form(data, "same.png")) for data in images)
            )
            names = [(await r.json())["name"] for r in responses]
            assert all(r.status == 200 for r in responses)
            assert len(set(names)) == len(images)
            for name, data in zip(names, images, strict=True):
                assert (tmp_path / "input" / name).read_bytes() == data
        finally:
            await client.close()

    kit.run(scenario)
