"""The persistent queue and history: one SQLite file under the user folder.

Why SQLite: each state change (queued, running, finished) is one small transaction, so a process that is
killed at any point leaves a consistent file. Restart semantics:
- history entries are kept as they were;
- prompts still `pending` are queued again in their original order;
- a prompt that was `running` when the process died is moved to the history with status
  "interrupted" (never silently re-run: it may be what crashed the process).
WAL journaling with synchronous=NORMAL is durable against a process crash (only a power loss can drop
the last transactions), which is the failure the restart semantics are about.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PENDING, RUNNING = "pending", "running"

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
    """Thread-safe (one lock, one connection) persistence of the queue and the history."""

    def __init__(self, path: Path, *, history_limit: int):
        self.path = path
        self.history_limit = history_limit
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- queue -------------------------------------------------------------------------------------

    def next_numbers(self) -> tuple[int, int]:
        """(next prompt number, next sequence number) continuing after what the file holds."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='counter'").fetchone()
            seq = self._db.execute("SELECT COALESCE(MAX(seq), -1) FROM queue").fetchone()[0]
        return (int(row[0]) if row else 0), int(seq) + 1

    def add(self, item: QueuedPrompt, next_number: int) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO queue VALUES (?,?,?,?,?,?,?,?)",
                (
                    item.prompt_id,
                    item.number,
                    item.seq,
                    PENDING,
                    json.dumps(item.prompt),
                    json.dumps(item.extra_data),
                    json.dumps(item.targets),
                    time.time(),
                ),
            )
            self._db.execute(
                "INSERT INTO meta VALUES ('counter', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(next_number),),
            )
            self._db.execute("COMMIT")

    def mark_running(self, prompt_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE queue SET state=? WHERE prompt_id=?", (RUNNING, prompt_id))

    def remove(self, prompt_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM queue WHERE prompt_id=?", [(p,) for p in prompt_ids])

    def load_queue(self) -> tuple[list[QueuedPrompt], list[QueuedPrompt]]:
        """(pending, was_running) as the file holds them, pending in queue order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT number, prompt_id, prompt, extra_data, targets, seq, state FROM queue "
                "ORDER BY number, seq"
            ).fetchall()
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
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM queue WHERE prompt_id=?", (prompt_id,))
            self._db.execute("DELETE FROM history WHERE prompt_id=?", (prompt_id,))
            self._db.execute(
                "INSERT INTO history (prompt_id, entry, finished) VALUES (?,?,?)",
                (prompt_id, json.dumps(entry, default=_json_fallback), time.time()),
            )
            self._db.execute(
                "DELETE FROM history WHERE seq NOT IN (SELECT seq FROM history ORDER BY seq DESC LIMIT ?)",
                (max(self.history_limit, 0),),
            )
            self._db.execute("COMMIT")

    def history(self, max_items: int | None = None, offset: int = 0) -> dict[str, Any]:
        """Oldest first like ComfyUI; with `max_items` the newest ones (skipping `offset` newest)."""
        with self._lock:
            if max_items is None:
                rows = self._db.execute("SELECT prompt_id, entry FROM history ORDER BY seq").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT prompt_id, entry FROM history ORDER BY seq DESC LIMIT ? OFFSET ?",
                    (max_items, max(offset, 0)),
                ).fetchall()[::-1]
        return {prompt_id: json.loads(entry) for prompt_id, entry in rows}

    def history_item(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT entry FROM history WHERE prompt_id=?", (prompt_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def delete_history(self, prompt_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM history WHERE prompt_id=?", [(p,) for p in prompt_ids])

    def clear_history(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM history")


def _json_fallback(value: Any) -> Any:
    """UI outputs are JSON by contract; anything else is stored as its description, not dropped."""
    return repr(value)
