"""Issue 12 §2: the server lost data on a NaN. A NaN `number` is refused with 400; and when a store write
fails midway anyway (a busy or failing disk), the queue keeps working: nothing is lost, nothing runs twice,
the history is recorded, and a restart recovers the right state."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from engine.server.app import create_app
from engine.server.config import ServerConfig
from engine.server.store import PromptStore


class _FailingConnection:
    """The store's real connection, except that the next statement starting with one of `failures`'
    prefixes raises (once per listed failure) — after the transaction's earlier statements ran."""

    def __init__(self, db: sqlite3.Connection, failures: list[str]):
        self._db = db
        self._failures = failures

    def _check(self, sql: str) -> None:
        for prefix in self._failures:
            if sql.startswith(prefix):
                self._failures.remove(prefix)
                raise sqlite3.OperationalError(f"disk I/O error (injected at {prefix!r})")

    def execute(self, sql: str, *args: Any) -> Any:
        self._check(sql)
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._check(sql)
        return self._db.executemany(sql, *args)


class FlakyStore(PromptStore):
    """A real PromptStore whose writes fail midway, once each, at the statements listed in `failures`."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.failures: list[str] = []
        super().__init__(*args, **kwargs)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with super()._transaction() as db:
            yield _FailingConnection(db, self.failures)


async def _client_with(runtime: Any, config: ServerConfig, store: PromptStore) -> TestClient:
    """The real app over a given store, on a loopback socket."""
    client = TestClient(TestServer(create_app(runtime, config, store=store)))
    await client.start_server()
    return client


async def _flaky_client(runtime: Any, config: ServerConfig) -> tuple[FlakyStore, TestClient]:
    assert config.store_path is not None
    store = FlakyStore(config.store_path, history_limit=100)
    return store, await _client_with(runtime, config, store)


def _sink(value: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "StubConst", "inputs": {"value": value}},
        "2": {"class_type": "StubSink", "inputs": {"value": ["1", 0]}},
    }


async def _runs_by_prompt(ws: Any, prompt_ids: list[str]) -> dict[str, int]:
    """execution_start messages per prompt id until every listed prompt has finished."""
    starts = dict.fromkeys(prompt_ids, 0)
    done: set[str] = set()
    while done != set(prompt_ids):
        body = await ws.receive_json(timeout=15)
        data = body["data"]
        if body["type"] == "execution_start":
            starts[data["prompt_id"]] = starts.get(data["prompt_id"], 0) + 1
        if body["type"] == "executing" and data["node"] is None:
            done.add(data["prompt_id"])
    return starts


def test_nan_number_is_refused_and_the_queue_keeps_working(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    store_path = tmp_path / "queue.sqlite3"

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(store_path=store_path))
        try:
            for number in ("NaN", '"nan"', "Infinity", "1e999"):
                raw = '{"prompt": {"1": {"class_type": "StubConst", "inputs": {"value": 1}}, '
                raw += (
                    '"2": {"class_type": "StubSink", "inputs": {"value": ["1", 0]}}}, "number": '
                    + number
                    + "}"
                )
                refused = await client.post("/prompt", data=raw, headers={"Content-Type": "application/json"})
                assert refused.status == 400, number
                assert "number" in (await refused.json())["error"]["message"].lower()
            accepted = await client.post("/prompt", json={"prompt": _sink(4), "number": 3})
            assert accepted.status == 200 and (await accepted.json())["number"] == 3.0
            prompt_id = (await accepted.json())["prompt_id"]
            entry = await kit.wait_history(client, prompt_id)
            assert entry["status"]["status_str"] == "success"
        finally:
            await client.close()
        # after a restart the finished prompt is still a success (it was once recorded as interrupted)
        again = await kit.start_client(runtime, ServerConfig(store_path=store_path))
        try:
            history = await (await again.get("/history")).json()
            assert [e["status"]["status_str"] for e in history.values()] == ["success"]
            assert (await (await again.get("/queue")).json())["queue_pending"] == []
        finally:
            await again.close()

    kit.run(scenario)


def test_failing_store_writes_lose_nothing_and_run_nothing_twice(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    store_path = tmp_path / "queue.sqlite3"
    config = ServerConfig(store_path=store_path)

    async def scenario() -> None:
        store, client = await _flaky_client(runtime, config)
        try:
            ws = await client.ws_connect("/ws?clientId=flaky")
            await ws.receive_json(timeout=5)
            # 1. queueing fails after the queue row was inserted: answered 503, nothing queued
            store.failures.append("INSERT INTO meta")
            failed = await client.post("/prompt", json={"prompt": _sink(1), "client_id": "flaky"})
            assert failed.status == 503 and (await failed.json())["error"]["type"] == "queue_unavailable"
            assert (await (await client.get("/queue")).json())["queue_pending"] == []
            # 2. marking running and writing the history each fail once midway: retried, recorded once
            store.failures += ["UPDATE queue", "INSERT INTO history"]
            ids = []
            for value in (2, 3):
                response = await client.post("/prompt", json={"prompt": _sink(value), "client_id": "flaky"})
                assert response.status == 200
                accepted = await response.json()
                assert accepted["number"] == value - 2
                ids.append(accepted["prompt_id"])
            assert await _runs_by_prompt(ws, ids) == dict.fromkeys(ids, 1)
            assert store.failures == []
            history = await (await client.get("/history")).json()
            assert list(history) == ids
            assert [history[i]["outputs"] for i in ids] == [{"2": {"values": [2]}}, {"2": {"values": [3]}}]
            assert all(history[i]["status"]["status_str"] == "success" for i in ids)
            # 3. a history clear that fails is answered 503 and changes nothing
            store.failures.append("DELETE FROM history")
            assert (await client.post("/history", json={"clear": True})).status == 503
            assert list(await (await client.get("/history")).json()) == ids
            await ws.close()
        finally:
            await client.close()

        # restart on the same file: the history is intact, nothing is pending or re-run, numbers go on
        again = await kit.start_client(runtime, config)
        try:
            ws = await again.ws_connect("/ws?clientId=flaky")
            await ws.receive_json(timeout=5)
            history = await (await again.get("/history")).json()
            assert list(history) == ids and all(
                e["status"]["status_str"] == "success" for e in history.values()
            )
            assert await (await again.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
            response = await (
                await again.post("/prompt", json={"prompt": _sink(5), "client_id": "flaky"})
            ).json()
            assert response["number"] == 2  # the failed prompt used no number: 0 and 1 went to the others
            assert await _runs_by_prompt(ws, [response["prompt_id"]]) == {response["prompt_id"]: 1}
            await asyncio.sleep(0.2)
            assert (await (await again.get("/prompt")).json())["exec_info"]["queue_remaining"] == 0
            await ws.close()
        finally:
            await again.close()

    kit.run(scenario)


def test_a_prompt_that_cannot_be_marked_running_is_not_run(kit, tmp_path, monkeypatch):
    """Running a prompt the file still lists as pending would run it a second time after a crash: when
    every try to mark it running fails, it is recorded as an error instead, and not run after a restart."""
    from engine.server import worker

    monkeypatch.setattr(worker, "WRITE_RETRY_PAUSES_S", (0.0, 0.0, 0.0))
    runtime = kit.make_runtime(tmp_path)
    config = ServerConfig(store_path=tmp_path / "queue.sqlite3")

    async def scenario() -> None:
        store, client = await _flaky_client(runtime, config)
        try:
            ws = await client.ws_connect("/ws?clientId=c")
            await ws.receive_json(timeout=5)
            store.failures += ["UPDATE queue"] * 4
            accepted = await (
                await client.post("/prompt", json={"prompt": _sink(7), "client_id": "c"})
            ).json()
            prompt_id = accepted["prompt_id"]
            assert await _runs_by_prompt(ws, [prompt_id]) == {prompt_id: 0}
            entry = await kit.wait_history(client, prompt_id)
            assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
            assert "queue file" in entry["status"]["messages"][-1][1]["exception_message"]
            await ws.close()
        finally:
            await client.close()
        again = await kit.start_client(runtime, config)
        try:
            assert await (await again.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
            history = await (await again.get("/history")).json()
            assert [e["status"]["status_str"] for e in history.values()] == ["error"]
        finally:
            await again.close()

    kit.run(scenario)


def test_the_event_loop_never_runs_sqlite(kit, tmp_path):
    """Every statement of a whole session (start-up recovery, queueing, the worker's writes, history
    reads and edits, shutdown) runs on the store's own thread."""
    import threading

    runtime = kit.make_runtime(tmp_path)
    config = ServerConfig(store_path=tmp_path / "queue.sqlite3")
    store = PromptStore(config.store_path, history_limit=100)
    threads: set[str] = set()
    store.run(lambda: store._conn.set_trace_callback(lambda _: threads.add(threading.current_thread().name)))

    async def scenario() -> None:
        client = await _client_with(runtime, config, store)
        try:
            prompt_id = (await (await client.post("/prompt", json={"prompt": _sink(1)})).json())["prompt_id"]
            await kit.wait_history(client, prompt_id)
            assert (await client.post("/queue", json={"clear": True, "delete": ["x"]})).status == 200
            assert list(await (await client.get("/history", params={"max_items": 5})).json()) == [prompt_id]
            assert (await client.post("/history", json={"delete": [prompt_id]})).status == 200
            assert await (await client.get(f"/history/{prompt_id}")).json() == {}
        finally:
            await client.close()

    kit.run(scenario)
    assert threads and all(name.startswith("diffgraph-store") for name in threads), threads


def test_a_failed_delete_keeps_the_prompts_queued(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    config = ServerConfig(store_path=tmp_path / "queue.sqlite3")

    async def scenario() -> None:
        store, client = await _flaky_client(runtime, config)
        try:
            blocker = await (
                await client.post("/prompt", json={"prompt": kit.save_prompt(1, steps=5000)})
            ).json()
            while not (await (await client.get("/queue")).json())["queue_running"]:
                await asyncio.sleep(0.01)
            ids = [
                (await (await client.post("/prompt", json={"prompt": _sink(v)})).json())["prompt_id"]
                for v in (1, 2)
            ]
            store.failures.append("DELETE FROM queue")
            assert (await client.post("/queue", json={"delete": [ids[0]]})).status == 503
            pending = (await (await client.get("/queue")).json())["queue_pending"]
            assert [item[1] for item in pending] == ids  # still there, in order
            assert (await client.post("/queue", json={"delete": [ids[0]]})).status == 200
            await client.post("/interrupt", json={"prompt_id": blocker["prompt_id"]})
            assert (await kit.wait_history(client, ids[1]))["status"]["status_str"] == "success"
            assert await (await client.get(f"/history/{ids[0]}")).json() == {}
        finally:
            await client.close()

    kit.run(scenario)
