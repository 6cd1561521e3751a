"""What `server.PromptServer.instance` stands on: the routes packs register, their on-prompt handlers and
the way their messages reach diffgraph's WebSocket clients.

The bridge exists from the moment a runtime binds (packs register routes while they import, before any
app exists). When the server's app is created it mounts the packs' routes and attaches its WebSocket hub
and queue (server_hooks.py); from then on `send_sync` reaches connected clients. Headless (the CLI's
`run`), messages go nowhere.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import web

from engine.execution.context import running_context

log = logging.getLogger("diffgraph.comfy_compat.server")


class BinaryEventTypes:
    """ComfyUI's binary WebSocket message types (protocol.py): the first big-endian uint32 of a frame."""

    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


_IMAGE_TYPES = {"JPEG": 1, "PNG": 2}


def _image_bytes(image_data: Any) -> tuple[str, bytes]:
    """(format, encoded bytes) of ComfyUI's ("JPEG"|"PNG", PIL image, max size or None) tuple."""
    from PIL import ImageOps

    image_format, image, max_size = (list(image_data) + [None])[:3]
    image_format = str(image_format or "JPEG").upper()
    if image_format not in _IMAGE_TYPES:
        image_format = "JPEG"
    if max_size is not None:
        image = ImageOps.contain(image, (max_size, max_size))
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return image_format, buffer.getvalue()


def encode_message(event: Any, data: Any) -> bytes | None:
    """The binary frame ComfyUI sends for `send(event, data)`, or None for a JSON message."""
    if event == BinaryEventTypes.UNENCODED_PREVIEW_IMAGE:
        image_format, payload = _image_bytes(data)
        header = struct.pack(">II", BinaryEventTypes.PREVIEW_IMAGE, _IMAGE_TYPES[image_format])
        return header + payload
    if event == BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA:
        image_data, metadata = data
        image_format, payload = _image_bytes(image_data)
        metadata = dict(metadata or {})
        metadata["image_type"] = "image/png" if image_format == "PNG" else "image/jpeg"
        text = json.dumps(metadata).encode("utf-8")
        return struct.pack(">II", BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA, len(text)) + text + payload
    if isinstance(data, bytes | bytearray):
        if not isinstance(event, int):
            raise RuntimeError(f"binary event types must be integers, got {event!r}")
        return struct.pack(">I", event) + bytes(data)
    return None


class ServerBridge:
    """The state behind PromptServer.instance for one runtime binding."""

    def __init__(self) -> None:
        self.routes = web.RouteTableDef()
        # A stand-in application for packs that add routes to `PromptServer.instance.app` while they
        # import (before the real app exists): its routes are copied into every app created for the
        # runtime, and `app` is the latest real one once there is one.
        self.stand_in = web.Application()
        self.app: web.Application = self.stand_in
        self.on_prompt_handlers: list[Callable[[Any], Any]] = []
        self.hub: Any = None  # engine.server.protocol.ClientHub once a server app is created
        self.queue: Any = None  # engine.server.worker.PromptQueue likewise
        self.sent_headless = 0

    # -- the server side ------------------------------------------------------------------------

    def attach(self, app: web.Application, hub: Any, queue: Any) -> None:
        self.app, self.hub, self.queue = app, hub, queue

    def trigger_on_prompt(self, body: Any) -> Any:
        """ComfyUI's trigger_on_prompt: each handler gets the POST /prompt body and returns the body the
        next one (and validation) sees; a failing handler is logged and skipped."""
        for handler in list(self.on_prompt_handlers):
            try:
                body = handler(body)
            except Exception:
                log.warning(
                    "an on_prompt handler failed; the prompt goes on without its change", exc_info=True
                )
        return body

    # -- messages -------------------------------------------------------------------------------

    def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        if self.hub is None:
            self.sent_headless += 1  # no clients can exist without a server: not even encoded
            log.debug("message %r without a server: not sent", event)
            return
        frame = encode_message(event, data)
        if frame is not None:
            self.hub.post_binary(frame, sid)
        else:
            self.hub.post(str(event), data, sid)

    # -- what the running prompt is ---------------------------------------------------------------

    def _running(self) -> tuple[Any, Any, Any] | None:
        """(client id, prompt id, node id) of the prompt the server runs now, if any."""
        return self.queue.current() if self.queue is not None else None

    @property
    def client_id(self) -> str | None:
        running = self._running()
        return running[0] if running is not None else None

    @property
    def last_node_id(self) -> str | None:
        context = running_context()
        if context is not None:
            return context.node_id
        running = self._running()
        return running[2] if running is not None else None

    @property
    def last_prompt_id(self) -> str | None:
        context = running_context()
        if context is not None:
            return context.prompt_id
        running = self._running()
        return running[1] if running is not None else None
