"""The first server routes speak ComfyUI's shapes: /object_info, /prompt (200 and 400), /history."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from engine.execution.executor import Executor
from engine.folders import Folders
from engine.plugins.loader import PluginReport
from engine.runtime import Runtime
from engine.server.app import create_app


def make_runtime(registry, tmp_path) -> Runtime:
    folders = Folders.create(tmp_path)
    return Runtime(folders, registry, PluginReport(), Executor(registry, services={"folders": folders}))


def test_prompt_round_trip(registry, tmp_path):
    async def scenario() -> None:
        client = TestClient(TestServer(create_app(make_runtime(registry, tmp_path))))
        await client.start_server()
        try:
            info = await (await client.get("/object_info")).json()
            assert info["Seeded"]["input"]["required"]["seed"][1]["control_after_generate"] is True
            one = await (await client.get("/api/object_info/Const")).json()
            assert list(one) == ["Const"]

            bad = await client.post(
                "/prompt",
                json={
                    "prompt": {
                        "1": {"class_type": "Const", "inputs": {"value": 9999}},
                        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
                    }
                },
            )
            assert bad.status == 400
            body = await bad.json()
            assert body["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"
            assert body["error"]["type"] == "prompt_outputs_failed_validation"

            good = await client.post(
                "/api/prompt",
                json={
                    "prompt": {
                        "1": {"class_type": "Const", "inputs": {"value": 3}},
                        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
                    },
                    "client_id": "test",
                },
            )
            assert good.status == 200
            accepted = await good.json()
            assert accepted["node_errors"] == {} and accepted["number"] == 0
            prompt_id = accepted["prompt_id"]
            for _ in range(1500):  # up to 30 s: the worker thread may be slow on a loaded machine
                history = await (await client.get(f"/history/{prompt_id}")).json()
                if history:
                    break
                await asyncio.sleep(0.02)
            entry = history[prompt_id]
            assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
            assert entry["outputs"] == {"2": {"values": [3]}}
            not_json = await client.post("/prompt", data=b"{")
            assert not_json.status == 400
        finally:
            await client.close()

    asyncio.run(scenario())
