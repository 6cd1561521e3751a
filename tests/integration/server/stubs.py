"""Stub node packs and helpers shared by the server tests (no models, no torch)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from engine.execution.executor import Executor
from engine.folders import Folders
from engine.plugins.loader import load_all_packs
from engine.registry import NodeRegistry
from engine.runtime import Runtime
from engine.server.app import create_app
from engine.server.config import ServerConfig

STUB_PACK = """
import time

from engine import api


@api.node("StubConst", inputs=[api.Int("value", 0, min=-1000000, max=1000000)], outputs=["INT"])
def const(value):
    return (value,)


@api.node(
    "StubSlow",
    inputs=[
        api.Input("a", "INT", force_input=True),
        api.Int("steps", 3, min=1, max=100000),
        api.Float("delay", 0.01, min=0.0, max=10.0),
    ],
    outputs=["INT"],
)
def slow(a, steps, delay, context):
    from PIL import Image

    for step in range(1, steps + 1):
        time.sleep(delay)
        context.progress(step, steps, Image.new("RGB", (8, 8), ((step * 40) % 256, 0, 0)))
    return (a,)


@api.node(
    "StubSaveImage",
    inputs=[api.Input("value", "INT", force_input=True), api.String("filename_prefix", "stub")],
    output_node=True,
)
def save_image(value, filename_prefix, context):
    from PIL import Image

    name = f"{filename_prefix}_{value:05d}_.png"
    Image.new("RGB", (16, 16), (value % 256, 100, 200)).save(context.folders.output / name)
    return api.NodeOutput(ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})


@api.node("StubFail", inputs=[api.Input("value", "INT", force_input=True)], outputs=["INT"])
def fail(value):
    raise RuntimeError(f"stub failure at {value}")


@api.node("StubSink", inputs=[api.Input("value", "INT", force_input=True)], output_node=True)
def sink(value):
    return api.NodeOutput(ui={"values": [value]})


NODES = [const, slow, save_image, fail, sink]
"""

BROKEN_PACK = "raise ImportError('this pack needs a library that is not installed')\n"


def write_packs(base: Path) -> Path:
    custom = base / "custom_nodes"
    (custom / "stubpack").mkdir(parents=True, exist_ok=True)
    (custom / "stubpack" / "__init__.py").write_text(textwrap.dedent(STUB_PACK))
    (custom / "broken_pack.py").write_text(BROKEN_PACK)
    web = custom / "webpack"
    (web / "js").mkdir(parents=True, exist_ok=True)
    (web / "__init__.py").write_text("WEB_DIRECTORY = './js'\nNODE_CLASS_MAPPINGS = {}\n")
    (web / "js" / "hello.js").write_text("console.log('hello from webpack');\n")
    return custom


def make_runtime(base: Path) -> Runtime:
    custom = write_packs(base)
    folders = Folders.create(base)
    folders.custom_nodes = [custom]
    registry = NodeRegistry(resolve_files=folders.resolve_choices)
    plugins = load_all_packs(registry, [custom], builtin_module=None)
    executor = Executor(registry, services={"folders": folders})
    return Runtime(folders, registry, plugins, executor, {"folders": folders})


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def start_client(runtime: Runtime, config: ServerConfig | None = None) -> TestClient:
    """The real app on a real loopback socket (aiohttp's TestServer), with a client for it."""
    client = TestClient(TestServer(create_app(runtime, config)))
    await client.start_server()
    return client


def save_prompt(value: int = 7, steps: int = 3, prefix: str = "stub") -> dict[str, Any]:
    """Const -> Slow (progress with previews) -> SaveImage."""
    return {
        "1": {"class_type": "StubConst", "inputs": {"value": value}},
        "2": {"class_type": "StubSlow", "inputs": {"a": ["1", 0], "steps": steps, "delay": 0.005}},
        "3": {"class_type": "StubSaveImage", "inputs": {"value": ["2", 0], "filename_prefix": prefix}},
    }


async def collect_until_done(ws: Any, prompt_id: str, timeout: float = 15) -> list[Any]:
    """Every message (dicts for text, bytes for binary) until `executing` with node None for prompt_id —
    the loop of ComfyUI's websockets_api_example.py."""
    received: list[Any] = []
    while True:
        message = await ws.receive(timeout=timeout)
        if message.type == WSMsgType.BINARY:
            received.append(message.data)
            continue
        assert message.type == WSMsgType.TEXT, message
        body = json.loads(message.data)
        received.append(body)
        data = body["data"]
        if body["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
            return received


async def wait_history(client: TestClient, prompt_id: str, timeout: float = 10) -> dict[str, Any]:
    for _ in range(int(timeout / 0.02)):
        body = await (await client.get(f"/history/{prompt_id}")).json()
        if body:
            return body[prompt_id]
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} never reached the history")


class ServerThread:
    """The real app served on a loopback port by a background thread, for plain blocking clients (raw
    bodies through http.client). `stop()` shuts it down gracefully."""

    def __init__(self, runtime: Runtime, config: ServerConfig | None = None):
        import threading

        from aiohttp import web

        self.app = create_app(runtime, config)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
