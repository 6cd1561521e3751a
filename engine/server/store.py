"""The persistent queue and history: one SQLite file under the user folder.

Why SQLite: each state change (queued, running, finished) is one small transaction, so a process that is
killed at any point leaves a consistent file. Restart semantics:
- history entries are kept as they were;
- prompts still `pending` are queued again in their original order;
- a prompt that was `running` when the process died is moved to the history with status
  "interrupted" (never silently re-run: it may be what crashed the process).
WAL journaling with synchronous=NORMAL is durable against a process crash (only a power loss can drop
the last transactions), which is the failure the restart semantics are about.

Threading: the connection lives on one dedicated thread (sqlite3 connections are bound to the thread that
made them) and every statement runs there, so the server's event loop never waits on the disk. The
worker thread calls the plain methods (they wait for the store thread); the event loop awaits `call`.
Every write is one transaction that commits or rolls back (`_transaction`), so no failure can leave the
connection inside an open transaction.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

PENDING, RUNNING = "pending", "running"

P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    prompt_id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    targets TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT UNIQUE NOT NULL,
    entry TEXT NOT NULL,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class QueuedPrompt:
    """One queue item: ComfyUI's tuple (number, prompt_id, prompt, extra_data, outputs_to_execute)."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    targets: list[str]
    seq: int = 0

    def as_comfy(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.targets]

    @property
    def sort_key(self) -> tuple[float, int]:
        return (self.number, self.seq)


class PromptStore:
    """Persistence of the queue and the history; all SQLite work on one thread of its own."""

    def __init__(self, path: Path, *, history_limit: int):
        self.path = path
        self.history_limit = history_limit
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffgraph-store")
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._closed = False
        try:
            self.run(self._open)
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

    def _open(self) -> None:
        self._thread = threading.current_thread()
        # isolation_level=None: the module starts no implicit transactions; `_transaction` opens them.
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- threading ---------------------------------------------------------------------------------

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(...)` on the store thread, waiting for it (directly when already there)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(...)` on the store thread, awaited from the event loop (which never blocks on SQLite).
        Jobs run one at a time in the order they were handed in."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Close the connection and end the store thread (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        self.run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the prompt store is closed")
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back when anything in it (or the
        commit itself) fails — the connection is never left inside a transaction."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- queue -------------------------------------------------------------------------------------

    def next_numbers(self) -> tuple[int, int]:
        """(next prompt number, next sequence number) continuing after what the file holds."""
        return self.run(self._next_numbers)

    def _next_numbers(self) -> tuple[int, int]:
        row = self._conn.execute("SELECT value FROM meta WHERE key='counter'").fetchone()
        seq = self._conn.execute("SELECT COALESCE(MAX(seq), -1) FROM queue").fetchone()[0]
        return (int(row[0]) if row else 0), int(seq) + 1

    def add(self, item: QueuedPrompt, next_number: int) -> None:
        self.run(self._add, item, next_number)

    def _add(self, item: QueuedPrompt, next_number: int) -> None:
        row = (
            item.prompt_id,
            item.number,
            item.seq,
            PENDING,
            _dumps(item.prompt),
            _dumps(item.extra_data),
            _dumps(item.targets),
            time.time(),
        )
        with self._transaction() as db:
            db.execute("INSERT INTO queue VALUES (?,?,?,?,?,?,?,?)", row)
            db.execute(
                "INSERT INTO meta VALUES ('counter', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(next_number),),
            )

    def mark_running(self, prompt_id: str) -> None:
        self.run(self._mark_running, prompt_id)

    def _mark_running(self, prompt_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE queue SET state=? WHERE prompt_id=?", (RUNNING, prompt_id))

    def remove(self, prompt_ids: list[str]) -> None:
        self.run(self._remove, prompt_ids)

    def _remove(self, prompt_ids: list[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM queue WHERE prompt_id=?", [(p,) for p in prompt_ids])

    def load_queue(self) -> tuple[list[QueuedPrompt], list[QueuedPrompt]]:
        """(pending, was_running) as the file holds them, pending in queue order."""
        rows = self.run(
            lambda: self._conn.execute(
                "SELECT number, prompt_id, prompt, extra_data, targets, seq, state FROM queue "
                "ORDER BY number, seq"
            ).fetchall()
        )
        pending: list[QueuedPrompt] = []
        running: list[QueuedPrompt] = []
        for number, prompt_id, prompt, extra, targets, seq, state in rows:
            item = QueuedPrompt(
                number, prompt_id, json.loads(prompt), json.loads(extra), json.loads(targets), seq
            )
            (running if state == RUNNING else pending).append(item)
        return pending, running

    # -- history -----------------------------------------------------------------------------------

    def finish(self, prompt_id: str, entry: dict[str, Any]) -> None:
        """Move a prompt from the queue to the history (one transaction) and apply the size limit."""
        self.run(self._finish, prompt_id, _dumps(entry))

    def _finish(self, prompt_id: str, entry_text: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM queue WHERE prompt_id=?", (prompt_id,))
            db.execute("DELETE FROM history WHERE prompt_id=?", (prompt_id,))
            db.execute(
                "INSERT INTO history (prompt_id, entry, finished) VALUES (?,?,?)",
                (prompt_id, entry_text, time.time()),
            )
            db.execute(
                "DELETE FROM history WHERE seq NOT IN (SELECT seq FROM history ORDER BY seq DESC LIMIT ?)",
                (max(self.history_limit, 0),),
            )

    def history(self, max_items: int | None = None, offset: int = 0) -> dict[str, Any]:
        """Oldest first like ComfyUI; with `max_items` the newest ones (skipping `offset` newest)."""
        return self.run(self._history, max_items, offset)

    def _history(self, max_items: int | None, offset: int) -> dict[str, Any]:
        if max_items is None:
            rows = self._conn.execute("SELECT prompt_id, entry FROM history ORDER BY seq").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT prompt_id, entry FROM history ORDER BY seq DESC LIMIT ? OFFSET ?",
                (max_items, max(offset, 0)),
            ).fetchall()[::-1]
        return {prompt_id: json.loads(entry) for prompt_id, entry in rows}

    def history_item(self, prompt_id: str) -> dict[str, Any] | None:
        row = self.run(
            lambda: self._conn.execute("SELECT entry FROM history WHERE prompt_id=?", (prompt_id,)).fetchone()
        )
        return json.loads(row[0]) if row else None

    def delete_history(self, prompt_ids: list[str]) -> None:
        self.run(self._delete_history, prompt_ids)

    def _delete_history(self, prompt_ids: list[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM history WHERE prompt_id=?", [(p,) for p in prompt_ids])

    def clear_history(self) -> None:
        self.run(self._clear_history)

    def _clear_history(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM history")


def _dumps(value: Any) -> str:
    """Strict JSON: NaN/Infinity (which browsers' JSON.parse refuses) are stored as null, as
    JavaScript's JSON.stringify writes them."""
    try:
        return json.dumps(value, default=_json_fallback, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), default=_json_fallback, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _json_fallback(value: Any) -> Any:
    """UI outputs are JSON by contract; anything else is stored as its description, not dropped."""
    return repr(value)
