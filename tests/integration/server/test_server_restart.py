"""The real `diffgraph serve` in a subprocess: queue prompts, kill -9 while one runs, start again ->
the history is intact, pending prompts run, the one that was running is marked interrupted (not re-run).
Then SIGTERM stops the server gracefully."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path):
        self.base = base
        self.port = _free_port()
        self.log = open(base / f"server-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "serve",
                "--port",
                str(self.port),
                "--base-directory",
                str(base),
                "--cpu",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[3],
        )
        deadline = time.time() + 90
        while True:
            try:
                self.get("/prompt")
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise AssertionError("server did not start:\n" + self.output()) from None
                time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return (self.base / f"server-{self.port}.log").read_text(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        # exactly like ComfyUI's example script: urllib, JSON bytes, no content type set by hand
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode()
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return json.loads(raw) if raw else None

    def wait_history(self, prompt_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}")
            if entry:
                return entry[prompt_id]
            time.sleep(0.05)
        raise AssertionError(f"{prompt_id} not in history:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def _sink(value: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "StubConst", "inputs": {"value": value}},
        "2": {"class_type": "StubSink", "inputs": {"value": ["1", 0]}},
    }


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL/SIGTERM")
def test_restart_after_kill_keeps_history_and_queue(kit, tmp_path):
    kit.write_packs(tmp_path)
    first = Server(tmp_path)
    try:
        done = first.post("/prompt", {"prompt": _sink(1), "client_id": "restart-test"})["prompt_id"]
        assert first.wait_history(done)["status"]["status_str"] == "success"
        slow = {
            "1": {"class_type": "StubConst", "inputs": {"value": 2}},
            "2": {"class_type": "StubSlow", "inputs": {"a": ["1", 0], "steps": 100000, "delay": 0.01}},
            "3": {"class_type": "StubSink", "inputs": {"value": ["2", 0]}},
        }
        running = first.post("/prompt", {"prompt": slow})["prompt_id"]
        pending = [first.post("/prompt", {"prompt": _sink(v)})["prompt_id"] for v in (3, 4)]
        deadline = time.time() + 20
        while not first.get("/queue")["queue_running"]:
            assert time.time() < deadline, first.output()
            time.sleep(0.05)
        assert [item[1] for item in first.get("/queue")["queue_pending"]] == pending
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.stop()

    second = Server(tmp_path)
    try:
        assert second.get(f"/history/{done}")[done]["outputs"] == {"2": {"values": [1]}}
        interrupted = second.wait_history(running)
        assert interrupted["status"]["status_str"] == "interrupted"
        assert interrupted["status"]["messages"][0][0] == "execution_interrupted"
        for prompt_id, value in zip(pending, (3, 4), strict=True):
            entry = second.wait_history(prompt_id)
            assert entry["status"]["status_str"] == "success" and entry["outputs"] == {
                "2": {"values": [value]}
            }
        assert second.get("/queue") == {"queue_running": [], "queue_pending": []}
        history = second.get("/history")
        assert list(history)[:4] == [done, running, *pending]
        # numbers continue after the restart instead of starting over
        assert second.post("/prompt", {"prompt": _sink(5)})["number"] == 4
        # graceful stop: SIGTERM ends the process cleanly, with structured log lines written
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(30) == 0
        log = second.output()
        assert "prompt finished" in log and f"prompt_id={pending[0]}" in log
    finally:
        second.stop()
