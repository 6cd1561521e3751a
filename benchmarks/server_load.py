"""Server load on loopback: many clients queueing cheap prompts, many WebSocket listeners.

- 20 concurrent HTTP clients each POST 10 cheap prompts (Const -> Sink) in sequence: all 200 must reach
  the history with status success, and each client's prompts must complete in the order it queued them.
- 50 WebSocket clients stay connected throughout: each must receive every `status` message (the same
  sequence, one per queue change: 200 queued + 200 finished).
- Prints POST /prompt latency (p50/p99) and end-to-end throughput (prompts completed per second).

The server runs in its own thread and event loop (like a separate process, without the start-up cost),
bound to 127.0.0.1 on a free port; all data lives in a temporary folder. Bounded: gives up after 120 s.

    .venv/bin/python benchmarks/server_load.py [--clients 20] [--per-client 10] [--listeners 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from engine import api
from engine.execution.executor import Executor
from engine.folders import Folders
from engine.plugins.loader import PluginReport
from engine.registry import NodeRegistry
from engine.runtime import Runtime
from engine.server.app import create_app
from engine.server.config import ServerConfig


@api.node("LoadConst", inputs=[api.Int("value", 0, min=0, max=10**9)], outputs=["INT"])
def load_const(value):
    return (value,)


@api.node("LoadSink", inputs=[api.Input("value", "INT", force_input=True)], output_node=True)
def load_sink(value):
    return api.NodeOutput(ui={"values": [value]})


def make_runtime(base: Path) -> Runtime:
    folders = Folders.create(base)
    registry = NodeRegistry()
    for definition in (load_const, load_sink):
        registry.register(definition, source="bench", builtin=True)
    return Runtime(folders, registry, PluginReport(), Executor(registry, services={"folders": folders}))


class ServerThread:
    def __init__(self, base: Path):
        self.app = create_app(make_runtime(base), ServerConfig(history_limit=100000))
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def listener(
    session: aiohttp.ClientSession,
    base: str,
    expected: int,
    statuses: list[int],
    connected: asyncio.Event,
    counter: list[int],
    total: int,
) -> None:
    async with session.ws_connect(f"{base}/ws") as ws:
        await ws.receive_json()  # the greeting
        counter[0] += 1
        if counter[0] == total:
            connected.set()
        while len(statuses) < expected:
            message = await ws.receive_json()
            if message["type"] == "status":
                statuses.append(message["data"]["status"]["exec_info"]["queue_remaining"])


async def poster(
    session: aiohttp.ClientSession, base: str, client: int, count: int, latencies: list[float]
) -> list[str]:
    ids = []
    for index in range(count):
        prompt = {
            "1": {"class_type": "LoadConst", "inputs": {"value": client * 1000 + index}},
            "2": {"class_type": "LoadSink", "inputs": {"value": ["1", 0]}},
        }
        started = time.perf_counter()
        async with session.post(
            f"{base}/prompt", json={"prompt": prompt, "client_id": f"c{client}"}
        ) as response:
            body = await response.json()
            assert response.status == 200, body
        latencies.append(time.perf_counter() - started)
        ids.append(body["prompt_id"])
    return ids


async def main_async(args: argparse.Namespace, base: str) -> int:
    expected_status = 2 * args.clients * args.per_client
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        connected = asyncio.Event()
        counter = [0]
        statuses: list[list[int]] = [[] for _ in range(args.listeners)]
        listeners = [
            asyncio.create_task(
                listener(session, base, expected_status, statuses[i], connected, counter, args.listeners)
            )
            for i in range(args.listeners)
        ]
        await asyncio.wait_for(connected.wait(), 30)
        latencies: list[float] = []
        started = time.perf_counter()
        posted = await asyncio.gather(
            *(poster(session, base, c, args.per_client, latencies) for c in range(args.clients))
        )
        queued_s = time.perf_counter() - started
        all_ids = {pid for ids in posted for pid in ids}
        while True:
            async with session.get(f"{base}/prompt") as response:
                if (await response.json())["exec_info"]["queue_remaining"] == 0:
                    break
            await asyncio.sleep(0.01)
        done_s = time.perf_counter() - started
        await asyncio.wait_for(asyncio.gather(*listeners), 30)
        async with session.get(f"{base}/history") as response:
            history: dict[str, Any] = await response.json()

    problems = []
    finished = [pid for pid in history if pid in all_ids]
    lost = all_ids - set(finished)
    if lost:
        problems.append(f"{len(lost)} prompt(s) lost")
    failed = [pid for pid in finished if history[pid]["status"]["status_str"] != "success"]
    if failed:
        problems.append(f"{len(failed)} prompt(s) did not succeed")
    position = {pid: index for index, pid in enumerate(history)}
    for client, ids in enumerate(posted):
        if [position.get(pid, -1) for pid in ids] != sorted(position.get(pid, -1) for pid in ids):
            problems.append(f"client {client}: prompts completed out of order")
    reference = statuses[0]
    if len(reference) != expected_status or any(s != reference for s in statuses):
        problems.append(
            f"status messages differ between listeners or are missing (first got {len(reference)})"
        )
    total = args.clients * args.per_client
    print(f"{'prompts':<34}{total} from {args.clients} clients; {args.listeners} websocket listeners")
    print(f"{'POST /prompt latency p50':<34}{percentile(latencies, 0.5) * 1000:8.2f} ms")
    print(f"{'POST /prompt latency p99':<34}{percentile(latencies, 0.99) * 1000:8.2f} ms")
    print(f"{'POST /prompt mean':<34}{statistics.fmean(latencies) * 1000:8.2f} ms")
    print(f"{'queueing throughput':<34}{total / queued_s:8.1f} prompts/s")
    print(f"{'end-to-end throughput':<34}{total / done_s:8.1f} prompts/s (queued -> history)")
    print(f"{'status messages per listener':<34}{len(reference):8d} (expected {expected_status})")
    print(
        f"{'lost / failed / out of order':<34}{len(lost)} / {len(failed)} / {sum('order' in p for p in problems)}"
    )
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--listeners", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = ServerThread(Path(folder))
        try:
            return asyncio.run(asyncio.wait_for(main_async(args, f"http://127.0.0.1:{server.port}"), 120))
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
