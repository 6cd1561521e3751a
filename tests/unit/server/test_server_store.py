"""The prompt store: every write is one transaction that commits or rolls back (a failed write never leaves
the connection inside a transaction, issue 12 §2), and all SQLite work runs on the store's own thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from engine.server.store import PromptStore, QueuedPrompt


def _item(prompt_id: str, number: float, seq: int) -> QueuedPrompt:
    return QueuedPrompt(number, prompt_id, {"1": {"class_type": "X", "inputs": {}}}, {}, ["1"], seq)


def _writable_by_others(path) -> bool:
    """A write transaction left open holds SQLite's write lock: another connection cannot write."""
    with sqlite3.connect(str(path), timeout=0) as other:
        try:
            other.execute("INSERT INTO meta VALUES ('probe', '1') ON CONFLICT(key) DO NOTHING")
            other.execute("DELETE FROM meta WHERE key='probe'")
        except sqlite3.OperationalError:  # "database is locked"
            return False
    return True


def _committed(path, sql: str) -> list[tuple]:
    """What another connection sees: only committed data."""
    with sqlite3.connect(str(path)) as other:
        return other.execute(sql).fetchall()


def test_a_failed_insert_rolls_back_and_later_writes_commit(tmp_path):
    """The original failure: a NaN number is stored as NULL, the NOT NULL constraint fails inside the
    transaction, which was never rolled back — every later write failed or was never committed."""
    path = tmp_path / "q.sqlite3"
    store = PromptStore(path, history_limit=10)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            store.add(_item("nan", float("nan"), 0), 1)
        assert _writable_by_others(path)
        store.add(_item("a", 0, 1), 1)
        store.mark_running("a")
        store.finish("a", {"status": {"status_str": "success"}})
        store.add(_item("b", 1, 2), 2)
        assert _committed(path, "SELECT prompt_id, state FROM queue") == [("b", "pending")]
        assert _committed(path, "SELECT prompt_id FROM history") == [("a",)]
        assert _committed(path, "SELECT value FROM meta") == [("2",)]
    finally:
        store.close()
    reopened = PromptStore(path, history_limit=10)
    try:
        pending, running = reopened.load_queue()
        assert [i.prompt_id for i in pending] == ["b"] and running == []
        assert list(reopened.history()) == ["a"]
    finally:
        reopened.close()


def test_a_write_failing_midway_leaves_nothing_half_done(tmp_path):
    """finish() deletes the queue row, then inserts the history row; when the insert fails (here a real
    SQLite trigger refuses it) the delete is rolled back too, and the next write works."""
    path = tmp_path / "q.sqlite3"
    store = PromptStore(path, history_limit=10)
    try:
        store.add(_item("poison", 0, 0), 1)
        store.add(_item("fine", 1, 1), 2)
        with sqlite3.connect(str(path)) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON history WHEN NEW.prompt_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
            store.finish("poison", {"status": {"status_str": "success"}})
        assert _writable_by_others(path)
        pending, _ = store.load_queue()
        assert [i.prompt_id for i in pending] == ["poison", "fine"]  # the delete was undone
        store.finish("fine", {"status": {"status_str": "success"}})
        assert _committed(path, "SELECT prompt_id FROM queue") == [("poison",)]
        assert _committed(path, "SELECT prompt_id FROM history") == [("fine",)]
    finally:
        store.close()


def test_non_finite_values_are_stored_as_null(tmp_path):
    """Strict JSON in the file: a node's UI output with NaN must not make the history unreadable to
    browsers (JSON.parse refuses NaN), nor fail the write."""
    store = PromptStore(tmp_path / "q.sqlite3", history_limit=10)
    try:
        store.add(_item("a", 0, 0), 1)
        store.finish("a", {"outputs": {"1": {"values": [float("nan"), float("inf"), 1.5]}}})
        text = _committed(tmp_path / "q.sqlite3", "SELECT entry FROM history")[0][0]
        assert "NaN" not in text and "Infinity" not in text
        assert store.history_item("a") == {"outputs": {"1": {"values": [None, None, 1.5]}}}
    finally:
        store.close()


def test_every_statement_runs_on_the_store_thread(tmp_path):
    """The event loop (and the worker) never run SQLite themselves: callers wait for the store thread."""
    store = PromptStore(tmp_path / "q.sqlite3", history_limit=10)
    threads: list[str] = []
    store.run(
        lambda: store._conn.set_trace_callback(lambda _: threads.append(threading.current_thread().name))
    )

    async def from_the_loop() -> None:
        await store.call(store.add, _item("a", 0, 0), 1)
        assert list(await store.call(store.history)) == []

    try:
        asyncio.run(from_the_loop())
        worker = threading.Thread(target=lambda: store.finish("a", {}), name="not-the-store")
        worker.start()
        worker.join()
        assert list(store.history()) == ["a"]
        assert threads and all(name.startswith("diffgraph-store") for name in threads), set(threads)
    finally:
        store.close()


def test_close_twice_is_harmless_and_a_closed_store_refuses_work(tmp_path):
    store = PromptStore(tmp_path / "q.sqlite3", history_limit=10)
    store.close()
    store.close()
    with pytest.raises(RuntimeError):
        store.history()
