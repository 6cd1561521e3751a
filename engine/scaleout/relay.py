"""Per-client order of results while several prompts run at once.

In single-process mode a client sees its prompts' messages one prompt after the other, in queue order;
scripts written against ComfyUI rely on that (they wait for `executing` with node None, then read the
next prompt's messages). With several workers a later prompt of the same client may run, or finish,
before an earlier one. Each prompt therefore gets a gate, a hub-like object its PromptReporter posts
through: the gate of a client's oldest unfinished prompt sends straight to the hub, the others hold
their messages and release them, in order, when every earlier prompt of that client has finished.
Messages for different clients are never held up by each other.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Hub(Protocol):
    def post(self, event: str, data: dict[str, Any], sid: str | None = None) -> None: ...

    def post_binary(self, payload: bytes, sid: str | None = None) -> None: ...


class PromptGate:
    """What a PromptReporter posts through (ClientHub's post / post_binary)."""

    def __init__(self, sequencer: ClientSequencer, prompt_id: str, sid: str | None) -> None:
        self._sequencer = sequencer
        self.prompt_id = prompt_id
        self.sid = sid
        self.live = False  # the client's oldest unfinished prompt: posts go straight out
        self.closed = False
        # ("text", event, data, sid) / ("binary", payload, None, sid)
        self.held: list[tuple[str, Any, Any, str | None]] = []

    def post(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        self._sequencer._post(self, ("text", event, data, sid))

    def post_binary(self, payload: bytes, sid: str | None = None) -> None:
        self._sequencer._post(self, ("binary", payload, None, sid))


class ClientSequencer:
    """The gates of every unfinished dispatched prompt, in dispatch order per client."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._lock = threading.Lock()  # held while sending too: a release must not interleave a live post
        self._lines: dict[str | None, list[PromptGate]] = {}
        self._gates: dict[str, PromptGate] = {}

    def open(self, prompt_id: str, sid: str | None) -> PromptGate:
        """The prompt's gate, created at its first dispatch (a re-queued prompt keeps its place)."""
        with self._lock:
            gate = self._gates.get(prompt_id)
            if gate is None:
                gate = PromptGate(self, prompt_id, sid)
                line = self._lines.setdefault(sid, [])
                gate.live = not line
                line.append(gate)
                self._gates[prompt_id] = gate
            return gate

    def close(self, prompt_id: str) -> None:
        """The prompt's last message was posted: release the next prompts of its client that are held."""
        with self._lock:
            gate = self._gates.pop(prompt_id, None)
            if gate is None:
                return
            gate.closed = True
            line = self._lines[gate.sid]
            while line and line[0].closed:
                line.pop(0)
                if line:
                    self._release(line[0])
            if not line:
                del self._lines[gate.sid]

    def held_count(self) -> int:
        with self._lock:
            return sum(len(g.held) for g in self._gates.values())

    def _release(self, gate: PromptGate) -> None:
        for message in gate.held:
            self._send(*message)
        gate.held.clear()
        gate.live = True

    def _post(self, gate: PromptGate, message: tuple[str, Any, Any, str | None]) -> None:
        with self._lock:
            if gate.live:
                self._send(*message)
            else:
                gate.held.append(message)

    def _send(self, kind: str, first: Any, second: Any, sid: str | None) -> None:
        if kind == "binary":
            self.hub.post_binary(first, sid)
        else:
            self.hub.post(first, second, sid)
