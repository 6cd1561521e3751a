"""The WebSocket side: connected clients, an ordered outbox, and the translation of executor events into
ComfyUI's messages.

Messages go through one asyncio queue drained by one task, so the order a client sees is the order the
worker produced them, whichever thread produced them. Messages about a prompt go to the client that
queued it (`client_id`), or to everyone when it gave none; `status` goes to everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from engine.execution import events as ev
from engine.server.previews import encode_preview_frame

log = logging.getLogger("diffgraph.server.ws")


@dataclass
class _Outgoing:
    sid: str | None  # None: broadcast
    text: dict[str, Any] | None = None
    binary: bytes | None = None


class ClientHub:
    """Connected WebSocket clients by session id, and the outbox that sends to them in order."""

    def __init__(self, features: dict[str, Any] | None = None) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        # The `feature_flags` exchange: ours (sent in answer to a client's) and each client's.
        self.features: dict[str, Any] = dict(features or {})
        self.client_features: dict[str, dict[str, Any]] = {}
        self._outbox: asyncio.Queue[_Outgoing | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._task = asyncio.create_task(self._drain(), name="diffgraph-ws-outbox")

    async def stop(self) -> None:
        if self._outbox is not None and self._task is not None:
            self._outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
        await self.close_sockets()

    async def close_sockets(self) -> None:
        for ws in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        self.sockets.clear()

    # -- posting (any thread) ----------------------------------------------------------------------

    def post(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        self._put(_Outgoing(sid, text={"type": event, "data": data}))

    def post_binary(self, payload: bytes, sid: str | None = None) -> None:
        self._put(_Outgoing(sid, binary=payload))

    def _put(self, item: _Outgoing) -> None:
        loop, outbox = self._loop, self._outbox
        if loop is None or outbox is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            outbox.put_nowait(item)
        else:
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(outbox.put_nowait, item)

    async def _drain(self) -> None:
        assert self._outbox is not None
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            if item.sid is None:
                targets = list(self.sockets.values())
            else:
                ws = self.sockets.get(item.sid)
                targets = [ws] if ws is not None else []
            for ws in targets:
                if ws.closed:
                    continue
                try:
                    if item.binary is not None:
                        await ws.send_bytes(item.binary)
                    else:
                        await ws.send_json(item.text)
                    self.sent += 1
                except (ConnectionError, RuntimeError) as exc:
                    log.debug("send to a closing websocket failed: %s", exc)

    # -- the /ws route -----------------------------------------------------------------------------

    async def handle(
        self, request: web.Request, status: Callable[[], dict[str, Any]], current: Callable[[], Any]
    ) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1024**2)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        old = self.sockets.pop(sid, None)  # a reconnect with the same id replaces the old socket
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        self.sockets[sid] = ws
        log.info("websocket connected", extra={"sid": sid, "clients": len(self.sockets)})
        # Through the outbox, so the greeting cannot overtake or be overtaken by queued messages.
        self.post("status", {"status": status(), "sid": sid}, sid)
        running = current()
        if running is not None and running[0] == sid and running[2] is not None:
            self.post(
                "executing", {"node": running[2], "display_node": running[2], "prompt_id": running[1]}, sid
            )
        first = True
        try:
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    log.warning("websocket closed with an error: %s", ws.exception())
                elif message.type == WSMsgType.TEXT and first:
                    self._feature_flags(sid, message.data)
                first = False
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
                self.client_features.pop(sid, None)
        return ws

    def _feature_flags(self, sid: str, text: str) -> None:
        """ComfyUI's negotiation: a client's first message may be `{"type": "feature_flags", "data":
        {...}}`; it is stored and answered with the server's flags. Anything else is ignored."""
        try:
            body = json.loads(text)
        except ValueError:
            log.debug("ignored a websocket message that is not JSON", extra={"sid": sid})
            return
        if isinstance(body, dict) and body.get("type") == "feature_flags":
            data = body.get("data")
            self.client_features[sid] = data if isinstance(data, dict) else {}
            self.post("feature_flags", dict(self.features), sid)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class PromptReporter:
    """An executor event sink for one prompt: sends ComfyUI's messages and records the history ones.

    Runs on the worker thread; `hub.post` is thread-safe.
    """

    hub: ClientHub
    prompt_id: str
    sid: str | None
    preview_format: str = "jpeg"
    preview_max_size: int = 512
    messages: list[list[Any]] = field(default_factory=list)  # history "status.messages"
    current_node: str | None = None
    wants_previews: bool = True  # ExecutionContext renders sampler previews only for sinks that say so
    node_states: dict[str, dict[str, Any]] = field(default_factory=dict)  # for `progress_state`
    # Nodes added by node expansion: node id -> (display node, parent node, real node), from their events.
    lineage: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)

    def _send(self, event: str, data: dict[str, Any], *, record: bool = False) -> None:
        if record:
            self.messages.append([event, data])
        self.hub.post(event, data, self.sid)

    def _node_state(self, node_id: str, state: str, value: float, maximum: float) -> None:
        """ComfyUI's `progress_state`: after each change, every node that left `pending` with its state
        (running, finished, error) and progress, in one message."""
        display, parent, real = self._lineage_of(node_id)
        self.node_states[node_id] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": display,
            "parent_node_id": parent,
            "real_node_id": real,
        }
        nodes = {key: dict(entry) for key, entry in self.node_states.items()}
        self._send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})

    def _lineage_of(self, node_id: str) -> tuple[str, str | None, str]:
        return self.lineage.get(node_id, (node_id, None, node_id))

    def _learn_lineage(self, event: Any) -> None:
        """Remember where an expanded node shows (its events say; its progress events do not)."""
        display = getattr(event, "display_node", None)
        if display is not None:
            self.lineage[event.node_id] = (display, event.parent_node, event.real_node or event.node_id)

    def __call__(self, event: Any) -> None:
        if isinstance(event, ev.NodeExecuting | ev.NodeExecuted):
            self._learn_lineage(event)
        if isinstance(event, ev.ExecutionFailed | ev.ExecutionFinished):  # terminal message stays last
            self._report_state(event)
            self._report(event)
        else:  # after: a preview frame must directly follow its `progress`
            self._report(event)
            self._report_state(event)

    def _finish_running(self) -> None:
        """Nodes run one at a time and only output nodes report `executed`: a node still running when
        the next starts (or the prompt ends) has finished."""
        for node_id, entry in list(self.node_states.items()):
            if entry["state"] == "running":
                self._node_state(node_id, "finished", entry["max"], entry["max"])

    def _report_state(self, event: Any) -> None:
        if isinstance(event, ev.NodeExecuting):
            self._finish_running()
            self._node_state(event.node_id, "running", 0, 1)
        elif isinstance(event, ev.ExecutionFinished) and event.status == "success":
            self._finish_running()
        elif isinstance(event, ev.NodeProgress):
            self._node_state(event.node_id, "running", event.value, event.max)
        elif isinstance(event, ev.NodeExecuted):
            previous = self.node_states.get(event.node_id, {})
            self._node_state(event.node_id, "finished", previous.get("max", 1), previous.get("max", 1))
        elif isinstance(event, ev.ExecutionFailed) and event.node_id:
            self._node_state(event.node_id, "error", 0, 1)

    def _report(self, event: Any) -> None:
        pid = self.prompt_id
        if isinstance(event, ev.ExecutionStarted):
            self._send("execution_start", {"prompt_id": pid, "timestamp": _now_ms()}, record=True)
        elif isinstance(event, ev.ExecutionCached):
            self._send(
                "execution_cached",
                {"nodes": list(event.nodes), "prompt_id": pid, "timestamp": _now_ms()},
                record=True,
            )
        elif isinstance(event, ev.NodeExecuting):
            display = self._lineage_of(event.node_id)[0]
            self.current_node = display  # ComfyUI's last_node_id: what a reconnecting client is shown
            self._send("executing", {"node": event.node_id, "display_node": display, "prompt_id": pid})
        elif isinstance(event, ev.NodeProgress):
            self._send(
                "progress", {"value": event.value, "max": event.max, "prompt_id": pid, "node": event.node_id}
            )
            if event.preview is not None:
                frame = _safe_preview(event.preview, self.preview_format, self.preview_max_size)
                if frame is not None:
                    self.hub.post_binary(frame, self.sid)
        elif isinstance(event, ev.NodeExecuted):
            self._send(
                "executed",
                {
                    "node": event.node_id,
                    "display_node": self._lineage_of(event.node_id)[0],
                    "output": event.output,
                    "prompt_id": pid,
                },
            )
        elif isinstance(event, ev.ExecutionFailed):
            self._send(
                "execution_error",
                {
                    "prompt_id": pid,
                    "node_id": event.node_id,
                    "node_type": event.node_type,
                    "executed": list(event.executed),
                    "exception_message": event.exception_message,
                    "exception_type": event.exception_type,
                    "traceback": list(event.traceback),
                    "current_inputs": event.current_inputs,
                    "current_outputs": {},
                    "timestamp": _now_ms(),
                },
                record=True,
            )
        elif isinstance(event, ev.ExecutionInterruptedEvent):
            self._send(
                "execution_interrupted",
                {
                    "prompt_id": pid,
                    "node_id": event.node_id,
                    "node_type": event.node_type,
                    "executed": list(event.executed),
                    "timestamp": _now_ms(),
                },
                record=True,
            )
        elif isinstance(event, ev.ExecutionFinished) and event.status == "success":
            self._send("execution_success", {"prompt_id": pid, "timestamp": _now_ms()}, record=True)

    def finished(self) -> None:
        """ComfyUI's end-of-prompt marker, sent after the terminal message whatever the outcome."""
        self.current_node = None
        self._send("executing", {"node": None, "display_node": None, "prompt_id": self.prompt_id})


def _safe_preview(preview: Any, image_format: str, max_size: int) -> bytes | None:
    try:
        return encode_preview_frame(preview, image_format, max_size)
    except Exception as exc:  # a broken preview must not fail the sampling step
        log.warning("could not encode a preview image: %s", exc)
        return None
