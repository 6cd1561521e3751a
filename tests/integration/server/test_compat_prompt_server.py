"""`server.PromptServer.instance` for ComfyUI packs, on diffgraph's real server: routes a pack registers
while it imports answer under / and /api, messages it sends from a node reach the WebSocket client,
comfy.utils.ProgressBar drives `progress` messages (with previews), an interrupt stops a node that checks
comfy.model_management, and on-prompt handlers can rewrite a prompt before it is validated."""

from __future__ import annotations

import asyncio
import struct
import textwrap
import uuid
from pathlib import Path

from engine.folders import Folders
from engine.runtime import build_runtime

SERVER_PACK = """
import os
import time

from aiohttp import web
from PIL import Image

import comfy.model_management
import comfy.utils
from server import PromptServer

routes = PromptServer.instance.routes


@routes.get("/queue")
async def clash(request):
    return web.json_response({"pack": "answered"})


@routes.get("/compat_pack/hello")
async def hello(request):
    return web.json_response({"hello": request.query.get("name", "world")})


@routes.get("/compat_pack/clients")
async def clients(request):
    server = PromptServer.instance
    return web.json_response({"metadata": server.sockets_metadata, "sockets": sorted(server.sockets),
                              "remaining": server.prompt_queue.get_tasks_remaining(),
                              "queue": server.prompt_queue.get_current_queue()})


@PromptServer.instance.routes.post("/compat_pack/echo")
async def echo(request):
    return web.json_response({"echo": await request.json()})


if not PromptServer.instance.app.router.frozen:
    static = os.path.join(os.path.dirname(__file__), "static")
    PromptServer.instance.app.add_routes([web.static("/compat_pack_static", static)])


def rewrite(body):
    for node in body["prompt"].values():
        if node["class_type"] == "CompatShout":
            node["inputs"]["text"] = node["inputs"]["text"].upper()
    return body


def broken(body):
    raise RuntimeError("a handler that fails must not stop the prompt")


PromptServer.instance.add_on_prompt_handler(broken)
PromptServer.instance.add_on_prompt_handler(rewrite)


class Shout:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    def run(self, text, unique_id):
        server = PromptServer.instance
        server.send_sync("compat_pack.shout", {"text": text, "node": unique_id,
                                                "last_node_id": server.last_node_id,
                                                "client_id": server.client_id}, server.client_id)
        server.send_progress_text("half way", unique_id, server.client_id)
        return {"ui": {"text": [text]}}


class Steps:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3}), "seed": ("INT", {"default": 0})}}

    def run(self, steps, seed):
        bar = comfy.utils.ProgressBar(steps)
        for step in range(steps):
            preview = ("JPEG", Image.new("RGB", (8, 8), (200, 10, 10)), 512) if step == 0 else None
            bar.update_absolute(step + 1, steps, preview)
        return {"ui": {"steps": [steps]}}


class Busy:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"marker": ("STRING", {"default": ""})}}

    def run(self, marker):
        open(marker, "w").close()
        for _ in range(1000):
            time.sleep(0.01)
            comfy.model_management.throw_exception_if_processing_interrupted()
        return {"ui": {"finished": [True]}}


NODE_CLASS_MAPPINGS = {"CompatShout": Shout, "CompatSteps": Steps, "CompatBusy": Busy}
"""


def compat_runtime(base: Path):
    pack = base / "custom_nodes" / "compat_pack"
    (pack / "static").mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent(SERVER_PACK))
    (pack / "static" / "widget.js").write_text("export const ok = 1;\n")
    runtime = build_runtime(Folders.create(base), with_models=False)
    record = runtime.plugins.get("compat_pack")
    assert record.error is None, record.error
    return runtime


async def queue(client, prompt: dict, client_id: str) -> str:
    prompt_id = str(uuid.uuid4())
    response = await client.post(
        "/prompt", json={"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
    )
    assert response.status == 200, await response.text()
    return prompt_id


def test_pack_routes_answer_under_root_and_api(kit, tmp_path):
    runtime = compat_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            for prefix in ("", "/api"):
                response = await client.get(f"{prefix}/compat_pack/hello?name=fox")
                assert response.status == 200 and await response.json() == {"hello": "fox"}
                response = await client.post(f"{prefix}/compat_pack/echo", json={"a": 1})
                assert await response.json() == {"echo": {"a": 1}}
            # what a pack sees of the connected clients (their feature flags) and of the queue
            ws = await client.ws_connect("/ws?clientId=viewer")
            await ws.receive_json(timeout=5)
            await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            assert (await ws.receive_json(timeout=5))["type"] == "feature_flags"
            seen = await (await client.get("/compat_pack/clients")).json()
            assert seen == {
                "metadata": {"viewer": {"feature_flags": {"supports_preview_metadata": True}}},
                "sockets": ["viewer"],
                "remaining": 0,
                "queue": [[], []],
            }
            await ws.close()
            response = await client.get("/compat_pack_static/widget.js")
            assert response.status == 200 and "ok = 1" in await response.text()
            # a pack route that clashes with one of ours is skipped: ours answer as before
            for path in ("/queue", "/api/queue"):
                assert set(await (await client.get(path)).json()) == {"queue_running", "queue_pending"}
        finally:
            await client.close()

    kit.run(scenario)
    kit.run(scenario)  # a second app for the same runtime serves the pack's routes too


def test_send_sync_progress_text_and_on_prompt_rewrite(kit, tmp_path):
    runtime = compat_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            client_id = uuid.uuid4().hex
            ws = await client.ws_connect(f"/ws?clientId={client_id}")
            await ws.receive_json(timeout=5)
            prompt_id = await queue(
                client, {"7": {"class_type": "CompatShout", "inputs": {"text": "quiet"}}}, client_id
            )
            messages = await kit.collect_until_done(ws, prompt_id)
            shouts = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "compat_pack.shout"]
            # the handler upper-cased the text before validation; the failing handler was skipped
            assert shouts == [{"text": "QUIET", "node": "7", "last_node_id": "7", "client_id": client_id}]
            frames = [m for m in messages if isinstance(m, bytes)]
            assert len(frames) == 1
            (event, length) = struct.unpack(">II", frames[0][:8])
            assert event == 3 and frames[0][8 : 8 + length] == b"7" and frames[0][8 + length :] == b"half way"
            history = await kit.wait_history(client, prompt_id)
            assert history["outputs"]["7"] == {"text": ["QUIET"]}
            assert history["prompt"][2]["7"]["inputs"]["text"] == "QUIET"
        finally:
            await client.close()

    kit.run(scenario)


def test_progress_bar_drives_progress_messages_with_a_preview(kit, tmp_path):
    runtime = compat_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            client_id = uuid.uuid4().hex
            ws = await client.ws_connect(f"/ws?clientId={client_id}")
            await ws.receive_json(timeout=5)
            prompt_id = await queue(
                client, {"3": {"class_type": "CompatSteps", "inputs": {"steps": 3, "seed": 1}}}, client_id
            )
            messages = await kit.collect_until_done(ws, prompt_id)
            progress = [
                (m["data"]["value"], m["data"]["max"], m["data"]["node"])
                for m in messages
                if isinstance(m, dict) and m["type"] == "progress"
            ]
            assert progress == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")]
            first = next(i for i, m in enumerate(messages) if isinstance(m, dict) and m["type"] == "progress")
            frame = messages[first + 1]  # the preview directly follows its progress message
            assert isinstance(frame, bytes) and struct.unpack(">II", frame[:8]) == (1, 1)
            assert sum(isinstance(m, bytes) for m in messages) == 1
        finally:
            await client.close()

    kit.run(scenario)


def test_interrupt_stops_a_node_that_checks_model_management(kit, tmp_path):
    runtime = compat_runtime(tmp_path)
    marker = tmp_path / "started"

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            client_id = uuid.uuid4().hex
            prompt = {"1": {"class_type": "CompatBusy", "inputs": {"marker": str(marker)}}}
            prompt_id = await queue(client, prompt, client_id)
            for _ in range(500):
                if marker.exists():
                    break
                await asyncio.sleep(0.01)
            assert marker.exists()
            assert (await client.post("/interrupt", json={})).status == 200
            history = await kit.wait_history(client, prompt_id)
            assert history["status"]["status_str"] == "interrupted"
            assert history["outputs"] == {}
            kinds = [event for event, _ in history["status"]["messages"]]
            assert "execution_interrupted" in kinds and "execution_error" not in kinds
        finally:
            await client.close()

    kit.run(scenario)


def test_routes_of_an_older_runtime_are_not_served_by_a_newer_app(kit, tmp_path):
    """Only the runtime that loaded the packs serves their routes (a second runtime rebinds)."""
    old = compat_runtime(tmp_path / "old")
    compat_runtime(tmp_path / "new")

    async def scenario() -> None:
        client = await kit.start_client(old)
        try:
            assert (await client.get("/compat_pack/hello")).status == 404
        finally:
            await client.close()

    kit.run(scenario)
