"""A client following ComfyUI's published websocket API example: queue with client_id, read the messages in
order until `executing` with node None, read /history/{id}, download the PNG through /view. Plus cached
re-runs, node errors, validation errors, interrupts and queue/history operations."""

from __future__ import annotations

import asyncio
import struct
import uuid

from engine.server.config import ServerConfig


def _types(messages):
    return [m["type"] if isinstance(m, dict) else "binary" for m in messages]


def test_comfyui_example_flow_then_cached_rerun(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            client_id = uuid.uuid4().hex
            ws = await client.ws_connect(f"/ws?clientId={client_id}")
            greeting = await ws.receive_json(timeout=5)
            assert greeting == {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id},
            }

            prompt_id = str(uuid.uuid4())
            response = await client.post(
                "/prompt", json={"prompt": kit.save_prompt(7), "client_id": client_id, "prompt_id": prompt_id}
            )
            assert response.status == 200
            accepted = await response.json()
            assert accepted == {"prompt_id": prompt_id, "number": 0, "node_errors": {}}

            messages = await kit.collect_until_done(ws, prompt_id)
            kinds = _types(messages)
            # status (queued) first, then ComfyUI's execution order
            assert kinds[0] == "status" and messages[0]["data"]["status"]["exec_info"]["queue_remaining"] == 1
            start = kinds.index("execution_start")
            assert kinds[start + 1] == "execution_cached" and messages[start + 1]["data"]["nodes"] == []
            executing = [
                m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"
            ]
            assert executing == ["1", "2", "3", None]
            progress = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "progress"]
            assert [(p["value"], p["max"], p["node"], p["prompt_id"]) for p in progress] == [
                (1, 3, "2", prompt_id),
                (2, 3, "2", prompt_id),
                (3, 3, "2", prompt_id),
            ]
            # each progress is followed by its binary preview: 8-byte header (type 1, JPEG 1), JPEG bytes
            frames = [m for m in messages if isinstance(m, bytes)]
            assert len(frames) == 3
            for frame in frames:
                assert struct.unpack(">II", frame[:8]) == (1, 1)
                assert frame[8:11] == b"\xff\xd8\xff"
            for index, kind in enumerate(kinds):
                if kind == "binary":
                    assert kinds[index - 1] == "progress"
            executed = next(m["data"] for m in messages if isinstance(m, dict) and m["type"] == "executed")
            assert executed["node"] == "3" and executed["prompt_id"] == prompt_id
            image = executed["output"]["images"][0]
            assert image == {"filename": "stub_00007_.png", "subfolder": "", "type": "output"}
            assert kinds[-2:] == ["execution_success", "executing"]

            history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
            assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
            assert [m[0] for m in history["status"]["messages"]] == [
                "execution_start",
                "execution_cached",
                "execution_success",
            ]
            assert history["prompt"][1] == prompt_id and history["prompt"][3]["client_id"] == client_id
            for node_output in history["outputs"].values():
                for img in node_output.get("images", []):
                    view = await client.get(
                        "/view",
                        params={
                            "filename": img["filename"],
                            "subfolder": img["subfolder"],
                            "type": img["type"],
                        },
                    )
                    assert view.status == 200
                    body = await view.read()
                    assert body == (tmp_path / "output" / img["filename"]).read_bytes()
                    assert body[:8] == b"\x89PNG\r\n\x1a\n"

            # the same prompt again: everything cached; the output node's UI is re-sent, nothing runs
            again = await (
                await client.post("/api/prompt", json={"prompt": kit.save_prompt(7), "client_id": client_id})
            ).json()
            messages = await kit.collect_until_done(ws, again["prompt_id"])
            cached = next(
                m["data"] for m in messages if isinstance(m, dict) and m["type"] == "execution_cached"
            )
            assert sorted(cached["nodes"]) == ["1", "2", "3"]
            assert "progress" not in _types(messages)
            assert [
                m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"
            ] == [None]
            assert again["number"] == 1
            await ws.close()
        finally:
            await client.close()

    kit.run(scenario)


def test_node_error_validation_error_and_interrupt(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(preview_format="png"))
        try:
            ws = await client.ws_connect("/ws?clientId=c1")
            await ws.receive_json(timeout=5)

            # validation errors: 400 with per-node errors, nothing queued
            bad = await client.post(
                "/prompt",
                json={
                    "prompt": {
                        "1": {"class_type": "StubConst", "inputs": {"value": 10**9}},
                        "2": {"class_type": "StubSink", "inputs": {"value": ["1", 0]}},
                        "3": {"class_type": "NoSuchNode", "inputs": {}},
                    }
                },
            )
            assert bad.status == 400
            body = await bad.json()
            assert body["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"
            assert body["node_errors"]["1"]["class_type"] == "StubConst"
            assert "error" in body and body["error"]["type"]
            assert (await (await client.get("/prompt")).json()) == {"exec_info": {"queue_remaining": 0}}
            no_prompt = await client.post("/prompt", json={"client_id": "c1"})
            assert no_prompt.status == 400 and (await no_prompt.json())["error"]["type"] == "no_prompt"

            # a failing node: execution_error naming it; the server keeps serving
            failing = {
                "1": {"class_type": "StubConst", "inputs": {"value": 3}},
                "2": {"class_type": "StubFail", "inputs": {"value": ["1", 0]}},
                "3": {"class_type": "StubSink", "inputs": {"value": ["2", 0]}},
            }
            queued = await (await client.post("/prompt", json={"prompt": failing, "client_id": "c1"})).json()
            messages = await kit.collect_until_done(ws, queued["prompt_id"])
            error = next(
                m["data"] for m in messages if isinstance(m, dict) and m["type"] == "execution_error"
            )
            assert error["node_id"] == "2" and error["node_type"] == "StubFail"
            assert (
                error["exception_type"] == "RuntimeError"
                and "stub failure at 3" in error["exception_message"]
            )
            assert any("stub failure" in line for line in error["traceback"])
            assert error["current_inputs"] == {"value": 3} and error["executed"] == ["1"]
            assert _types(messages)[-2:] == ["execution_error", "executing"]
            history = await kit.wait_history(client, queued["prompt_id"])
            assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False

            # interrupt mid-sampling
            long = kit.save_prompt(5, steps=2000)
            queued = await (await client.post("/prompt", json={"prompt": long, "client_id": "c1"})).json()
            seen = []
            while True:
                message = await ws.receive(timeout=10)
                if message.type.name == "BINARY":
                    assert message.data[:8] == struct.pack(">II", 1, 2)  # PNG previews as configured
                    assert message.data[8:12] == b"\x89PNG"
                    continue
                data = message.json()
                seen.append(data)
                if data["type"] == "progress" and data["data"]["value"] >= 3:
                    break
            running = await (await client.get("/queue")).json()
            assert running["queue_running"][0][1] == queued["prompt_id"]
            assert (await client.post("/interrupt", json={})).status == 200
            rest = await kit.collect_until_done(ws, queued["prompt_id"])
            interrupted = next(
                m["data"] for m in rest if isinstance(m, dict) and m["type"] == "execution_interrupted"
            )
            assert interrupted["node_id"] == "2" and interrupted["node_type"] == "StubSlow"
            assert (
                max(
                    m["data"]["value"] for m in seen + rest if isinstance(m, dict) and m["type"] == "progress"
                )
                < 2000
            )
            history = await kit.wait_history(client, queued["prompt_id"])
            assert history["status"]["status_str"] == "interrupted"
            assert history["status"]["messages"][-1][0] == "execution_interrupted"

            # still serving: a quick prompt succeeds afterwards
            ok = await (
                await client.post("/prompt", json={"prompt": kit.save_prompt(9, steps=1), "client_id": "c1"})
            ).json()
            messages = await kit.collect_until_done(ws, ok["prompt_id"])
            assert "execution_success" in _types(messages)
            await ws.close()
        finally:
            await client.close()

    kit.run(scenario)


def test_prompt_with_some_invalid_outputs_runs_the_valid_ones(kit, tmp_path):
    """ComfyUI's answer when only some outputs fail validation: 200 with the prompt id, number and the failed
    nodes' node_errors; only the valid outputs run. With none valid, 400 as before."""
    runtime = kit.make_runtime(tmp_path)
    prompt = {
        "1": {"class_type": "StubConst", "inputs": {"value": 10**9}},  # above max: output 2 fails
        "2": {"class_type": "StubSink", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "StubConst", "inputs": {"value": 12}},
        "4": {"class_type": "StubSink", "inputs": {"value": ["3", 0]}},
    }

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            ws = await client.ws_connect("/ws?clientId=c1")
            await ws.receive_json(timeout=5)
            response = await client.post("/prompt", json={"prompt": prompt, "client_id": "c1"})
            assert response.status == 200
            body = await response.json()
            assert set(body) == {"prompt_id", "number", "node_errors"} and body["number"] == 0
            assert set(body["node_errors"]) == {"1"}
            entry = body["node_errors"]["1"]
            assert entry["class_type"] == "StubConst" and entry["dependent_outputs"] == ["2"]
            assert entry["errors"][0]["type"] == "value_bigger_than_max"
            messages = await kit.collect_until_done(ws, body["prompt_id"])
            executing = [
                m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"
            ]
            assert executing == ["3", "4", None]
            history = await kit.wait_history(client, body["prompt_id"])
            assert history["status"]["status_str"] == "success"
            assert set(history["outputs"]) == {"4"} and history["outputs"]["4"]["values"] == [12]

            prompt["3"]["inputs"]["value"] = -(10**9)  # now no output is valid
            refused = await client.post("/prompt", json={"prompt": prompt, "client_id": "c1"})
            assert refused.status == 400
            body = await refused.json()
            assert body["error"]["type"] == "prompt_outputs_failed_validation"
            assert set(body["node_errors"]) == {"1", "3"}
            assert (await (await client.get("/prompt")).json()) == {"exec_info": {"queue_remaining": 0}}
            await ws.close()
        finally:
            await client.close()

    kit.run(scenario)


def test_queue_order_front_delete_and_history_operations(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(history_limit=3))
        try:
            ws = await client.ws_connect("/ws")  # no clientId: the server assigns one
            sid = (await ws.receive_json(timeout=5))["data"]["sid"]
            assert len(sid) == 32

            blocker = await (
                await client.post("/prompt", json={"prompt": kit.save_prompt(1, steps=2000)})
            ).json()
            while not (await (await client.get("/queue")).json())["queue_running"]:
                await asyncio.sleep(0.01)

            def sink(value):
                return {
                    "1": {"class_type": "StubConst", "inputs": {"value": value}},
                    "2": {"class_type": "StubSink", "inputs": {"value": ["1", 0]}},
                }

            ids = {}
            for value in (10, 11, 12):
                ids[value] = (await (await client.post("/prompt", json={"prompt": sink(value)})).json())[
                    "prompt_id"
                ]
            first = await (await client.post("/prompt", json={"prompt": sink(13), "front": True})).json()
            ids[13] = first["prompt_id"]
            assert first["number"] < 0
            queue = await (await client.get("/api/queue")).json()
            assert [item[1] for item in queue["queue_pending"]] == [ids[13], ids[10], ids[11], ids[12]]
            assert queue["queue_running"][0][1] == blocker["prompt_id"]
            assert (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 5

            assert (await client.post("/queue", json={"delete": [ids[11]]})).status == 200
            queue = await (await client.get("/queue")).json()
            assert [item[1] for item in queue["queue_pending"]] == [ids[13], ids[10], ids[12]]

            # interrupt only if the running prompt is the one named
            await client.post("/interrupt", json={"prompt_id": "someone-else"})
            await asyncio.sleep(0.05)
            assert (await (await client.get("/queue")).json())["queue_running"]
            await client.post("/api/interrupt", json={"prompt_id": blocker["prompt_id"]})
            for value in (13, 10, 12):
                entry = await kit.wait_history(client, ids[value])
                assert entry["outputs"] == {"2": {"values": [value]}}
            history = await (await client.get("/history")).json()
            # limit 3: the oldest (the interrupted blocker) was dropped; order is oldest first
            assert list(history) == [ids[13], ids[10], ids[12]]
            newest = await (await client.get("/history", params={"max_items": 1})).json()
            assert list(newest) == [ids[12]]
            assert await (await client.get(f"/history/{ids[11]}")).json() == {}

            duplicate = await client.post("/prompt", json={"prompt": sink(1), "prompt_id": ids[12]})
            assert duplicate.status == 400 and "already" in (await duplicate.json())["error"]["message"]
            assert (await client.post("/history", json={"delete": [ids[10]]})).status == 200
            assert list(await (await client.get("/history")).json()) == [ids[13], ids[12]]
            assert (await client.post("/history", json={"clear": True})).status == 200
            assert await (await client.get("/history")).json() == {}

            await ws.close()
        finally:
            await client.close()

    kit.run(scenario)
