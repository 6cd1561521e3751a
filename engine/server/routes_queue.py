"""Queue routes: `/prompt`, `/queue`, `/history`, `/interrupt`, `/free` with ComfyUI's shapes, and `/ws`.

Module-level handlers; the queue, store and hub come from the app (keys.py). Store reads and writes are
awaited on the store's own thread, never run on the event loop.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Any

from aiohttp import web

from engine.comfy_compat.server_hooks import run_prompt_handlers
from engine.errors import WorkflowFormatError, WorkflowValidationError
from engine.server.keys import HUB_KEY, QUEUE_KEY, RUNTIME_KEY, STORE_KEY
from engine.server.limits import bounded, cut_text
from engine.server.security import BadRequest, read_json
from engine.server.worker import DuplicatePromptId, Submission

_PROMPT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# `number` orders the queue; beyond 2**53 a number is no longer exact in JSON clients (JavaScript).
MAX_PROMPT_NUMBER = 2**53


class PromptRefused(Exception):
    """A POST /prompt refused before validation; answered in ComfyUI's prompt-error shape."""

    def __init__(self, message: str, kind: str = "invalid_prompt"):
        super().__init__(message)
        self.kind = kind

    def response(self) -> web.Response:
        return _prompt_error(self.kind, str(self))


def _prompt_error(kind: str, message: str, status: int = 400) -> web.Response:
    return web.json_response(
        {
            "error": {"type": kind, "message": cut_text(message), "details": "", "extra_info": {}},
            "node_errors": {},
        },
        status=status,
    )


def _prompt_number(value: Any) -> float | None:
    """ComfyUI's `number`: a JSON number, finite and within +-2**53 (a NaN once reached the store)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PromptRefused(f"'number' must be a JSON number, not {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PromptRefused(f"'number' must be a finite number, not {value!r}")
    if abs(value) > MAX_PROMPT_NUMBER:
        raise PromptRefused(f"'number' must be between -2**53 and 2**53, not {value!r}")
    return float(value)


def parse_submission(body: Any) -> Submission:
    if not isinstance(body, dict):
        raise PromptRefused("the request body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, dict):
        raise PromptRefused("the request has no 'prompt' object (API-format workflow)", "no_prompt")
    extra_data = body.get("extra_data") or {}
    if not isinstance(extra_data, dict):
        raise PromptRefused("'extra_data' must be an object")
    extra_data = dict(extra_data)
    if body.get("client_id") is not None:
        extra_data["client_id"] = str(body["client_id"])
    # ComfyUI stamps every accepted prompt (ms since the epoch); the jobs API sorts by it.
    extra_data["create_time"] = int(time.time() * 1000)
    front = body.get("front")
    if front is not None and not isinstance(front, bool):
        raise PromptRefused(f"'front' must be true or false, not {front!r}")
    prompt_id = body.get("prompt_id") or str(uuid.uuid4())
    if not isinstance(prompt_id, str) or not _PROMPT_ID.match(prompt_id):
        raise PromptRefused("'prompt_id' must be 1-128 letters, digits, '-', '_', '.' or ':'")
    targets = body.get("partial_execution_targets")
    if targets is not None and (
        not isinstance(targets, list) or not all(isinstance(t, str | int) for t in targets)
    ):
        raise PromptRefused("'partial_execution_targets' must be a list of node ids")
    return Submission(
        prompt,
        extra_data,
        prompt_id,
        _prompt_number(body.get("number")),
        bool(front),
        [str(t) for t in targets] if targets else None,
    )


async def post_prompt(request: web.Request) -> web.Response:
    queue = request.app[QUEUE_KEY]
    try:
        body = await read_json(request)
    except BadRequest as exc:  # every /prompt refusal in ComfyUI's prompt-error shape
        return _prompt_error(exc.kind, str(exc), exc.status)
    # ComfyUI packs' on_prompt handlers see (and may rewrite) the body before it is checked.
    body = run_prompt_handlers(request.app[RUNTIME_KEY], body)
    try:
        sub = parse_submission(body)
        validated = queue.validate(sub.prompt, sub.targets)
        number = await queue.store.call(queue.submit, validated, sub)
    except PromptRefused as exc:
        return exc.response()
    except (WorkflowFormatError, DuplicatePromptId) as exc:
        return _prompt_error("invalid_prompt", str(exc))
    except WorkflowValidationError as exc:
        # bounded: the errors quote the workflow's values, which may be arbitrarily long
        body = {"error": exc.prompt_error(), "node_errors": exc.node_errors()}
        return web.json_response(bounded(body), status=400)
    # When some outputs failed validation ComfyUI still queues the valid ones and answers the failed
    # ones' errors with the prompt id (200), so the frontend marks those nodes.
    node_errors = bounded(validated.node_errors)  # they quote the workflow's values
    return web.json_response({"prompt_id": sub.prompt_id, "number": number, "node_errors": node_errors})


async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(request.app[QUEUE_KEY].status())


async def get_queue(request: web.Request) -> web.Response:
    running, pending = request.app[QUEUE_KEY].snapshot()
    return web.json_response({"queue_running": running, "queue_pending": pending})


async def _clear_and_delete(request: web.Request) -> tuple[bool, list[str] | None]:
    """The body of POST /queue and POST /history: `{"clear": true}` and/or `{"delete": [ids]}`."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest(400, 'expected {"clear": true} and/or {"delete": [prompt ids]}')
    delete = body.get("delete")
    if delete is not None and (
        not isinstance(delete, list) or not all(isinstance(v, str | int) for v in delete)
    ):
        raise BadRequest(400, "'delete' must be a list of prompt ids")
    return bool(body.get("clear")), [str(v) for v in delete] if delete is not None else None


async def post_queue(request: web.Request) -> web.Response:
    queue = request.app[QUEUE_KEY]
    clear, delete = await _clear_and_delete(request)
    if clear:
        await queue.store.call(queue.clear)
    if delete is not None:
        await queue.store.call(queue.delete, delete)
    return web.Response(status=200)


async def post_history(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    clear, delete = await _clear_and_delete(request)
    if clear:
        await store.call(store.clear_history)
    if delete is not None:
        await store.call(store.delete_history, delete)
    return web.Response(status=200)


def _count_parameter(request: web.Request, name: str) -> int | None:
    """A non-negative integer query parameter (SQLite cannot bind integers past 2**63)."""
    if name not in request.query:
        return None
    try:
        value = int(request.query[name])
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_PROMPT_NUMBER:
        raise BadRequest(400, f"{name} must be an integer from 0 to 2**53")
    return value


async def get_history(request: web.Request) -> web.Response:
    max_items = _count_parameter(request, "max_items")
    offset = _count_parameter(request, "offset") or 0
    store = request.app[STORE_KEY]
    return web.json_response(await store.call(store.history, max_items, offset))


async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    store = request.app[STORE_KEY]
    entry = await store.call(store.history_item, prompt_id)
    return web.json_response({prompt_id: entry} if entry is not None else {})


async def post_interrupt(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True)
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    request.app[QUEUE_KEY].interrupt_running(str(prompt_id) if prompt_id else None)
    return web.Response(status=200)


async def post_free(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True)
    if not isinstance(body, dict):
        raise BadRequest(400, 'expected {"unload_models": bool, "free_memory": bool}')
    request.app[QUEUE_KEY].request_free(
        unload_models=bool(body.get("unload_models")), free_memory=bool(body.get("free_memory"))
    )
    return web.Response(status=200)


async def websocket(request: web.Request) -> web.StreamResponse:
    queue = request.app[QUEUE_KEY]
    return await request.app[HUB_KEY].handle(request, queue.status, queue.current)


ROUTES = [
    web.post("/prompt", post_prompt),
    web.get("/prompt", get_prompt),
    web.get("/queue", get_queue),
    web.post("/queue", post_queue),
    web.get("/history", get_history),
    web.get("/history/{prompt_id}", get_history_item),
    web.post("/history", post_history),
    web.post("/interrupt", post_interrupt),
    web.post("/free", post_free),
    web.get("/ws", websocket),
]
