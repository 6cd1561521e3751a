"""ComfyUI's `server` module: `PromptServer.instance`, there before any pack imports (also headless).

Backed by the runtime's ServerBridge (engine.comfy_compat.prompt_server): routes packs add are served
under / and /api by diffgraph's server, `send_sync` reaches its WebSocket clients, and on-prompt
handlers see each POST /prompt body before it is validated.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from engine.comfy_compat.binding import current as _current
from engine.comfy_compat.prompt_server import BinaryEventTypes, ServerBridge

__all__ = ["PromptServer", "BinaryEventTypes"]

# Packs locate "ComfyUI's root" as the folder of PromptServer's file (inspect.getfile(PromptServer)) and
# create folders there: the runtime's base folder, as for folder_paths, never the installed engine.
__file__ = str(_current().folders.base / "server.py")


class _PromptQueue:
    """ComfyUI's `server.prompt_queue` over diffgraph's queue (empty when there is no server)."""

    def __init__(self, bridge: ServerBridge) -> None:
        self._bridge = bridge

    def get_current_queue(self) -> tuple[list[Any], list[Any]]:
        queue = self._bridge.queue
        return queue.snapshot() if queue is not None else ([], [])

    get_current_queue_volatile = get_current_queue

    def get_tasks_remaining(self) -> int:
        queue = self._bridge.queue
        return int(queue.remaining()) if queue is not None else 0

    def wipe_queue(self) -> None:
        if self._bridge.queue is not None:
            self._bridge.queue.clear()

    def delete_queue_item(self, function: Any) -> bool:
        """Delete the first pending item for which function(item) is true (items as GET /queue lists)."""
        queue = self._bridge.queue
        if queue is None:
            return False
        for item in queue.snapshot()[1]:
            if function(item):
                return bool(queue.delete([item[1]]))
        return False

    def set_flag(self, name: str, data: Any) -> None:
        if self._bridge.queue is not None and name in ("unload_models", "free_memory"):
            self._bridge.queue.request_free(
                **{"unload_models": False, "free_memory": False, name: bool(data)}
            )


class PromptServer:
    """ComfyUI's PromptServer as packs use it (one instance per runtime: `PromptServer.instance`)."""

    instance: PromptServer

    def __init__(self, bridge: ServerBridge) -> None:
        self._bridge = bridge
        self.routes: web.RouteTableDef = bridge.routes
        self.on_prompt_handlers = bridge.on_prompt_handlers
        self.prompt_queue = _PromptQueue(bridge)
        self.supports = ["custom_nodes_from_web"]
        self.number = 0
        self.user_manager: Any = None
        self.client_session: Any = None

    # -- what the server is now -------------------------------------------------------------------
    @property
    def app(self) -> web.Application:
        return self._bridge.app

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return getattr(self._bridge.hub, "_loop", None)

    @property
    def sockets(self) -> dict[str, Any]:
        return self._bridge.hub.sockets if self._bridge.hub is not None else {}

    @property
    def sockets_metadata(self) -> dict[str, dict[str, Any]]:
        hub = self._bridge.hub
        if hub is None:
            return {}
        return {sid: {"feature_flags": hub.client_features.get(sid, {})} for sid in hub.sockets}

    @property
    def client_id(self) -> str | None:
        return self._bridge.client_id

    @property
    def last_node_id(self) -> str | None:
        return self._bridge.last_node_id

    @property
    def last_prompt_id(self) -> str | None:
        return self._bridge.last_prompt_id

    # -- messages -----------------------------------------------------------------------------------
    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        self._bridge.send(event, data, sid)

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        self._bridge.send(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self._bridge.send(event, data, sid)

    async def send_bytes(self, event: int, data: bytes, sid: str | None = None) -> None:
        self._bridge.send(event, bytes(data), sid)

    async def send_image(self, image_data: Any, sid: str | None = None) -> None:
        self._bridge.send(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, image_data, sid)

    def send_progress_text(self, text: str | bytes, node_id: str, sid: str | None = None) -> None:
        """ComfyUI's progress text: a TEXT frame of (uint32 length, node id, text)."""
        body = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        node = str(node_id).encode("utf-8")
        self._bridge.send(BinaryEventTypes.TEXT, len(node).to_bytes(4, "big") + node + body, sid)

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.get_queue_info()})

    def get_queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.prompt_queue.get_tasks_remaining()}}

    # -- prompts --------------------------------------------------------------------------------------
    def add_on_prompt_handler(self, handler: Any) -> None:
        self._bridge.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data: Any) -> Any:
        return self._bridge.trigger_on_prompt(json_data)

    def add_routes(self) -> None:
        """ComfyUI mounts the routes itself at start-up; diffgraph's app does (engine/server/app.py)."""


PromptServer.instance = PromptServer(_current().state["prompt_server"])
