"""The Ray executor end to end on a local Ray instance with 2 CPU workers: the real server (HTTP, WebSocket,
SQLite queue) dispatching to real worker actors that run the tiny checkpoint through the real loaders."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest

from engine.server.keys import QUEUE_KEY
from tests.integration.ray.helpers import collect, run, server_runtime, start_client, txt2img

pytestmark = pytest.mark.slow

CLIENTS = 4
PER_CLIENT = 5


async def submit(client: Any, prompt: dict[str, Any], client_id: str) -> str:
    response = await client.post("/prompt", json={"prompt": prompt, "client_id": client_id})
    body = await response.json()
    assert response.status == 200, body
    return body["prompt_id"]


async def connect(client: Any, client_id: str) -> Any:
    ws = await client.ws_connect(f"/ws?clientId={client_id}")
    await ws.receive_json(timeout=30)  # the greeting
    return ws


def slow_prompt(steps: int, delay: float) -> tuple[dict[str, Any], int]:
    """One RaySlow node (progress every `delay` s) with a value no earlier run cached; and the value."""
    value = uuid.uuid4().int % 1000000
    return {"1": {"class_type": "RaySlow", "inputs": {"value": value, "steps": steps, "delay": delay}}}, value


def hold_prompt(which: str, delay: float = 0.0) -> dict[str, Any]:
    """Load tiny checkpoint `which` and hold its MODEL for `delay` s (a fresh tag: never cached)."""
    tag = uuid.uuid4().int % 1000000
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"tiny_{which}.safetensors"}},
        "2": {"class_type": "RayHoldModel", "inputs": {"model": ["1", 0], "tag": tag, "delay": delay}},
    }


async def wait_running(ws: Any, prompt_id: str) -> None:
    """Until the prompt's first progress message: it is running on a worker."""
    while True:
        message = await ws.receive_json(timeout=120)
        if message["type"] == "progress" and message["data"]["prompt_id"] == prompt_id:
            return


def prompt_shapes(messages: list[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Per prompt, its messages as shapes: (type, data keys, node) for text, the 8-byte header for
    binary preview frames (they follow their prompt's `progress`)."""
    streams: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    last = None
    for message in messages:
        if isinstance(message, bytes):
            assert last is not None
            streams[last].append(("binary", message[:8]))
            continue
        data = message["data"]
        if "prompt_id" not in data:
            continue
        last = data["prompt_id"]
        streams[last].append((message["type"], tuple(sorted(data)), data.get("node")))
    return streams


def status_shapes(messages: list[Any]) -> set[tuple[Any, ...]]:
    return {
        (m["type"], tuple(sorted(m["data"])), tuple(sorted(m["data"]["status"])))
        for m in messages
        if isinstance(m, dict) and m["type"] == "status"
    }


async def four_clients(client: Any, text: str) -> tuple[dict[str, list[str]], dict[str, list[Any]]]:
    """4 clients each queue 5 prompts (interleaved), then read their sockets until all are done."""
    sockets = {f"client{n}-{uuid.uuid4().hex[:6]}": None for n in range(CLIENTS)}
    for client_id in sockets:
        sockets[client_id] = await connect(client, client_id)
    submitted: dict[str, list[str]] = {client_id: [] for client_id in sockets}
    for n in range(PER_CLIENT):
        for c, client_id in enumerate(sockets):
            prompt = txt2img("tiny_a.safetensors", seed=n * CLIENTS + c, text=text)
            submitted[client_id].append(await submit(client, prompt, client_id))
    received = {}
    for client_id, ws in sockets.items():
        received[client_id] = await collect(ws, set(submitted[client_id]))
        await ws.close()
    return submitted, received


def check_exactly_once(submitted: dict[str, list[str]], received: dict[str, list[Any]]) -> None:
    for client_id, ids in submitted.items():
        texts = [m for m in received[client_id] if isinstance(m, dict)]
        mine = {m["data"]["prompt_id"] for m in texts if "prompt_id" in m["data"]}
        assert mine == set(ids), "a client got messages of another client's prompt, or missed one"
        counts = Counter((m["type"], m["data"].get("prompt_id")) for m in texts)
        for prompt_id in ids:
            assert counts[("execution_start", prompt_id)] == 1
            assert counts[("execution_success", prompt_id)] == 1
        done = [
            m["data"]["prompt_id"] for m in texts if m["type"] == "executing" and m["data"]["node"] is None
        ]
        assert done == ids, "results must reach each client in the order it queued the prompts"


async def history_files(client: Any, prompt_ids: list[str]) -> list[str]:
    history = await (await client.get("/history")).json()
    assert sorted(history) == sorted(prompt_ids)
    names = []
    for prompt_id in prompt_ids:
        entry = history[prompt_id]
        assert entry["status"]["status_str"] == "success", entry["status"]
        names += [image["filename"] for image in entry["outputs"]["9"]["images"]]
    return names


def test_twenty_prompts_from_four_clients_complete_once_with_the_embedded_messages(
    pool, shared_base, tmp_path
):
    text = f"a lighthouse {uuid.uuid4().hex[:8]}"  # nothing any earlier test cached
    outcomes = {}
    for mode in ("embedded", "ray"):
        runtime = server_runtime(tmp_path / mode, shared_base)

        async def scenario(mode: str = mode, runtime: Any = runtime) -> None:
            client = await start_client(runtime, pool if mode == "ray" else None)
            try:
                submitted, received = await four_clients(client, text)
                all_ids = [pid for ids in submitted.values() for pid in ids]
                files = await history_files(client, all_ids)
                outcomes[mode] = (submitted, received, files)
                if mode == "ray":
                    outcomes["routing"] = client.server.app[QUEUE_KEY].routing.as_dict()
            finally:
                await client.close()

        run(scenario)

    for mode in ("embedded", "ray"):
        submitted, received, files = outcomes[mode]
        check_exactly_once(submitted, received)
        # Landed under the server's counter, as one process saves them: none overwritten, none twice.
        assert sorted(files) == [f"ray_{n:05}_.png" for n in range(1, CLIENTS * PER_CLIENT + 1)]
        for name in files:
            assert (tmp_path / mode / "output" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(outcomes["routing"]["per_worker"]) == 2, "both workers must have run prompts"

    shapes = {}
    for mode in ("embedded", "ray"):
        received = outcomes[mode][1]
        streams = [tuple(s) for r in received.values() for s in prompt_shapes(r).values()]
        shapes[mode] = Counter(streams)
        assert len(streams) == CLIENTS * PER_CLIENT
    # Two stream shapes in both modes: a worker's first prompt (loads and encodes) and the warm ones.
    assert set(shapes["ray"]) == set(shapes["embedded"]) and len(shapes["ray"]) == 2
    cold = max(shapes["embedded"], key=len)
    assert shapes["embedded"][cold] == 1 and shapes["ray"][cold] == 2  # one cold start per worker
    assert any(kind == "binary" for kind, *_ in cold), "sampler previews must be relayed"
    all_messages = {mode: [m for r in outcomes[mode][1].values() for m in r] for mode in ("embedded", "ray")}
    assert status_shapes(all_messages["ray"]) == status_shapes(all_messages["embedded"])


def test_a_worker_killed_mid_prompt_hands_the_prompt_to_the_other(pool, shared_base, tmp_path):
    runtime = server_runtime(tmp_path, shared_base)

    async def scenario() -> None:
        client = await start_client(runtime, pool)
        queue = client.server.app[QUEUE_KEY]
        try:
            ws = await connect(client, "victim")
            prompt, value = slow_prompt(steps=20, delay=0.1)
            prompt_id = await submit(client, prompt, "victim")
            await wait_running(ws, prompt_id)
            stats = await asyncio.to_thread(queue.cluster_stats)
            (victim,) = [w for w in stats["workers"] if w.get("running") == prompt_id]
            os.kill(victim["pid"], signal.SIGKILL)

            messages = await collect(ws, {prompt_id})
            types = [m["type"] for m in messages if isinstance(m, dict)]
            assert types[-2:] == ["execution_success", "executing"]
            (executed,) = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "executed"]
            assert executed["output"]["value"] == [value]
            assert executed["output"]["pid"][0] != victim["pid"], "it must have completed on the other worker"
            history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
            assert history["status"]["status_str"] == "success"

            # The killed worker comes back (Ray restarts the actor) and rejoins the pool.
            await asyncio.to_thread(pool.wait_ready, 300)
            after = {w["index"]: w for w in await asyncio.to_thread(pool.stats)}
            assert after[victim["index"]]["state"] == "idle"
            assert after[victim["index"]]["pid"] != victim["pid"]
            await ws.close()
        finally:
            await client.close()

    run(scenario)


def test_routing_sends_a_prompt_to_the_worker_holding_its_checkpoint(pool, shared_base, tmp_path):
    runtime = server_runtime(tmp_path, shared_base)
    # After a, b each worker holds one checkpoint; a plain least-loaded choice would then alternate.
    sequence = ["a", "b", "b", "a", "a", "b"]

    async def scenario() -> None:
        client = await start_client(runtime, pool)
        queue = client.server.app[QUEUE_KEY]
        try:
            ws = await connect(client, "router")
            ran_on: dict[str, set[int]] = defaultdict(set)
            for which in sequence:
                prompt_id = await submit(client, hold_prompt(which), "router")
                messages = await collect(ws, {prompt_id})
                (executed,) = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "executed"]
                ran_on[which].add(executed["output"]["pid"][0])
            assert len(ran_on["a"]) == 1 and len(ran_on["b"]) == 1 and ran_on["a"] != ran_on["b"], ran_on

            stats = await asyncio.to_thread(queue.cluster_stats)
            by_pid = {w["pid"]: w for w in stats["workers"]}
            for which in ("a", "b"):  # each worker holds its checkpoint and only that one
                models = by_pid[min(ran_on[which])]["models"]
                assert models["ram"] + models["device"] == [f"tiny_{which}.safetensors"], models
            assert stats["routing"]["hits"] == len(sequence) - 2  # all but each checkpoint's first prompt
            await ws.close()
        finally:
            await client.close()

    run(scenario)


def test_a_later_prompt_may_start_first_but_its_client_gets_results_in_queue_order(
    pool, shared_base, tmp_path
):
    """With a on one worker and b on the other, both busy: when b's worker frees, p2 (a) waits for a's
    worker while p3 (b) goes first; the client still receives p0, p1, p2, p3 in that order."""
    runtime = server_runtime(tmp_path, shared_base)

    async def scenario() -> None:
        client = await start_client(runtime, pool)
        try:
            ws = await connect(client, "orderly")
            for which in ("a", "b"):  # one checkpoint per worker
                await collect(ws, {await submit(client, hold_prompt(which), "orderly")})
            # p0 and p1 keep both workers busy while p2 and p3 are queued behind them.
            p0 = await submit(client, hold_prompt("b", delay=2.0), "orderly")
            p1 = await submit(client, hold_prompt("a", delay=3.0), "orderly")
            p2 = await submit(client, hold_prompt("a"), "orderly")
            p3 = await submit(client, hold_prompt("b"), "orderly")
            messages = await collect(ws, {p0, p1, p2, p3})
            texts = [m for m in messages if isinstance(m, dict)]
            done = [
                m["data"]["prompt_id"]
                for m in texts
                if m["type"] == "executing" and m["data"]["node"] is None
            ]
            assert done == [p0, p1, p2, p3]
            history = await (await client.get("/history")).json()

            def stamp(prompt_id: str, kind: str) -> int:
                messages = history[prompt_id]["status"]["messages"]
                return next(data["timestamp"] for name, data in messages if name == kind)

            assert stamp(p3, "execution_success") <= stamp(p2, "execution_start"), "p3 must have run first"
            routing = client.server.app[QUEUE_KEY].routing.as_dict()
            assert routing["hits"] >= 3  # p0, p1 and p3, each on the worker holding its checkpoint
            await ws.close()
        finally:
            await client.close()

    run(scenario)


def test_interrupt_reaches_the_worker_running_the_prompt(pool, shared_base, tmp_path):
    runtime = server_runtime(tmp_path, shared_base)

    async def scenario() -> None:
        client = await start_client(runtime, pool)
        try:
            ws = await connect(client, "stopper")
            prompt, _ = slow_prompt(steps=200, delay=0.05)
            prompt_id = await submit(client, prompt, "stopper")
            await wait_running(ws, prompt_id)
            response = await client.post("/interrupt", json={"prompt_id": prompt_id})
            assert response.status == 200
            messages = await collect(ws, {prompt_id}, timeout=30)
            types = [m["type"] for m in messages if isinstance(m, dict)]
            assert "execution_interrupted" in types and "executed" not in types
            progress = [
                m["data"]["value"] for m in messages if isinstance(m, dict) and m["type"] == "progress"
            ]
            assert max(progress, default=0) < 200, "the node must have stopped early"
            history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
            assert history["status"]["status_str"] == "interrupted"
            await ws.close()
        finally:
            await client.close()

    run(scenario)


def test_prompts_fail_clearly_when_no_worker_can_start(ray_pool, shared_base, tmp_path):
    """Workers whose constructor fails are dead for good: queued prompts fail with the reason, never hang."""
    from engine.folders import Folders
    from engine.scaleout.actor import WorkerSpec
    from engine.scaleout.pool import WorkerPool

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the staging folder should go")
    spec = WorkerSpec(Folders.create(shared_base), staging_root=str(blocker))
    broken = WorkerPool(spec, workers=1, cpus_per_worker=0)  # the module's workers hold both CPUs
    runtime = server_runtime(tmp_path / "server", shared_base)

    async def scenario() -> None:
        broken.start()
        client = await start_client(runtime, broken)
        try:
            ws = await connect(client, "unlucky")
            prompt, _ = slow_prompt(steps=1, delay=0.0)
            prompt_id = await submit(client, prompt, "unlucky")
            messages = await collect(ws, {prompt_id}, timeout=120)
            (error,) = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "execution_error"]
            assert "no Ray worker is alive" in error["exception_message"]
            assert error["exception_type"] == "WorkerLost"
            history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
            assert history["status"]["status_str"] == "error"
            await ws.close()
        finally:
            await client.close()
            broken.close()

    run(scenario)
