"""Queue routes: `/prompt`, `/queue`, `/history`, `/interrupt`, `/free` with ComfyUI's shapes."""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from engine.errors import WorkflowFormatError, WorkflowValidationError
from engine.server.security import BadRequest, read_json
from engine.server.store import PromptStore
from engine.server.worker import PromptQueue

_PROMPT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def _prompt_error(kind: str, message: str, details: str = "") -> web.Response:
    return web.json_response(
        {
            "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
            "node_errors": {},
        },
        status=400,
    )


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise BadRequest(400, f"'{what}' must be a list of prompt ids")
    return [str(v) for v in value]


def add_queue_routes(routes: web.RouteTableDef, queue: PromptQueue, store: PromptStore) -> None:
    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            return _prompt_error("invalid_prompt", "the request body must be a JSON object")
        prompt = body.get("prompt")
        if not isinstance(prompt, dict):
            return _prompt_error("no_prompt", "the request has no 'prompt' object (API-format workflow)")
        extra_data = body.get("extra_data") or {}
        if not isinstance(extra_data, dict):
            return _prompt_error("invalid_prompt", "'extra_data' must be an object")
        extra_data = dict(extra_data)
        if body.get("client_id") is not None:
            extra_data["client_id"] = str(body["client_id"])
        number = None
        if body.get("number") is not None:
            try:
                number = float(body["number"])
            except (TypeError, ValueError):
                return _prompt_error("invalid_prompt", f"'number' must be a number, not {body['number']!r}")
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        if not isinstance(prompt_id, str) or not _PROMPT_ID.match(prompt_id):
            return _prompt_error(
                "invalid_prompt", "'prompt_id' must be 1-128 letters, digits, '-', '_', '.' or ':'"
            )
        if queue.knows(prompt_id):
            return _prompt_error(
                "invalid_prompt", f"prompt_id {prompt_id!r} is already queued or in the history"
            )
        targets = body.get("partial_execution_targets")
        if targets is not None and (
            not isinstance(targets, list) or not all(isinstance(t, str | int) for t in targets)
        ):
            return _prompt_error("invalid_prompt", "'partial_execution_targets' must be a list of node ids")
        try:
            validated = queue.validate(prompt, [str(t) for t in targets] if targets else None)
        except WorkflowFormatError as exc:
            return _prompt_error("invalid_prompt", str(exc))
        except WorkflowValidationError as exc:
            return web.json_response(
                {"error": exc.prompt_error(), "node_errors": exc.node_errors()}, status=400
            )
        number = queue.submit(
            validated, prompt, extra_data, prompt_id=prompt_id, number=number, front=bool(body.get("front"))
        )
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    @routes.get("/prompt")
    async def get_prompt(_: web.Request) -> web.Response:
        return web.json_response(queue.status())

    @routes.get("/queue")
    async def get_queue(_: web.Request) -> web.Response:
        running, pending = queue.snapshot()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest(400, 'expected {"clear": true} and/or {"delete": [prompt ids]}')
        if body.get("clear"):
            queue.clear()
        if "delete" in body:
            queue.delete(_string_list(body["delete"], "delete"))
        return web.Response(status=200)

    @routes.get("/history")
    async def get_history(request: web.Request) -> web.Response:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", 0))
        except ValueError:
            raise BadRequest(400, "max_items and offset must be integers") from None
        return web.json_response(store.history(max_items, offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_item(request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = store.history_item(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest(400, 'expected {"clear": true} and/or {"delete": [prompt ids]}')
        if body.get("clear"):
            store.clear_history()
        if "delete" in body:
            store.delete_history(_string_list(body["delete"], "delete"))
        return web.Response(status=200)

    @routes.post("/interrupt")
    async def post_interrupt(request: web.Request) -> web.Response:
        body = await read_json(request, allow_empty=True)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        queue.interrupt_running(str(prompt_id) if prompt_id else None)
        return web.Response(status=200)

    @routes.post("/free")
    async def post_free(request: web.Request) -> web.Response:
        body = await read_json(request, allow_empty=True)
        if not isinstance(body, dict):
            raise BadRequest(400, 'expected {"unload_models": bool, "free_memory": bool}')
        queue.request_free(
            unload_models=bool(body.get("unload_models")), free_memory=bool(body.get("free_memory"))
        )
        return web.Response(status=200)
