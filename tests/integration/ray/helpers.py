"""Helpers of the Ray executor tests (conftest.py holds the fixtures): the stub node pack the workers
load, the tiny txt2img prompt, a server with or without the Ray queue, a WebSocket collector."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from engine.folders import Folders
from engine.runtime import Runtime, build_runtime
from engine.server.app import create_app
from engine.server.config import ServerConfig

STUB_PACK = """
import os
import time

from engine import api


@api.node(
    "RaySlow",
    inputs=[
        api.Int("value", 0, min=0, max=1000000),
        api.Int("steps", 5, min=1, max=1000),
        api.Float("delay", 0.05, min=0.0, max=10.0),
    ],
    output_node=True,
)
def slow(value, steps, delay, context):
    for step in range(1, steps + 1):
        time.sleep(delay)
        context.progress(step, steps)
    return api.NodeOutput(ui={"pid": [os.getpid()], "value": [value]})


@api.node(
    "RayHoldModel",
    inputs=[
        api.Input("model", "MODEL"),
        api.Int("tag", 0, min=0, max=1000000),
        api.Float("delay", 0.0, min=0.0, max=10.0),
    ],
    output_node=True,
)
def hold_model(model, tag, delay):
    time.sleep(delay)
    return api.NodeOutput(ui={"pid": [os.getpid()], "tag": [tag]})


NODES = [slow, hold_model]
"""

CHECKPOINTS = {"tiny_a.safetensors": 1, "tiny_b.safetensors": 2}


def txt2img(ckpt: str, seed: int, text: str, prefix: str = "ray") -> dict[str, Any]:
    """The txt2img graph made tiny (64x64, 2 steps): loader, two encoders, sampler, decode, save."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "watermark", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": 2,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def server_runtime(base: Path, shared_base: Path) -> Runtime:
    """The server's own runtime (validation, /object_info): its own folders, the shared models and pack."""
    folders = Folders.create(base)
    shared = Folders.create(shared_base)
    folders.models, folders.custom_nodes = shared.models, shared.custom_nodes
    return build_runtime(folders, preview_method="latent2rgb")


async def start_client(runtime: Runtime, pool: Any | None = None, **queue_options: Any) -> TestClient:
    """The real app on a loopback socket; with `pool`, prompts run on it (RayPromptQueue)."""
    factory = None
    if pool is not None:
        from engine.scaleout.queue import RayPromptQueue

        def factory(rt: Any, store: Any, hub: Any, config: Any) -> Any:
            return RayPromptQueue(rt, store, hub, config, pool, own_pool=False, **queue_options)

    client = TestClient(TestServer(create_app(runtime, ServerConfig(), queue_factory=factory)))
    await client.start_server()
    return client


async def collect(ws: Any, prompt_ids: set[str], timeout: float = 120) -> list[Any]:
    """Every message (dicts, bytes for binary frames) until `executing` with node None came for every id."""
    waiting, received = set(prompt_ids), []
    while waiting:
        message = await ws.receive(timeout=timeout)
        if message.type == WSMsgType.BINARY:
            received.append(message.data)
            continue
        assert message.type == WSMsgType.TEXT, message
        body = json.loads(message.data)
        received.append(body)
        if body["type"] == "executing" and body["data"]["node"] is None:
            waiting.discard(body["data"]["prompt_id"])
    return received


def run(scenario: Any, timeout: float = 240) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))
