"""A first server: ComfyUI-shaped `/object_info`, `/prompt`, `/queue`, `/history`, `/interrupt` and
`/system_stats` (each also under `/api/`), with one worker thread executing prompts in order.

This is the foundation the full server issue builds on (WebSocket, persistence, uploads, auth come
there); what is here already speaks ComfyUI's request and response shapes.
"""

from __future__ import annotations

import asyncio
import platform
import queue
import sys
import threading
import time
import uuid
from typing import Any

from aiohttp import web

from engine.errors import WorkflowFormatError, WorkflowValidationError
from engine.execution.context import InterruptFlag
from engine.execution.events import CollectingSink
from engine.graph.api_format import parse_api_workflow
from engine.graph.validate import ValidatedWorkflow, validate_workflow
from engine.runtime import Runtime


class PromptWorker:
    """Executes queued prompts one at a time on a background thread; keeps their history in memory."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.pending: queue.Queue[tuple[int, str, ValidatedWorkflow, dict[str, Any]] | None] = queue.Queue()
        self.history: dict[str, dict[str, Any]] = {}
        self.running: str | None = None
        self.counter = 0
        self.interrupt = InterruptFlag()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="diffgraph-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.pending.put(None)

    def submit(
        self, validated: ValidatedWorkflow, prompt: dict[str, Any], extra_data: dict[str, Any]
    ) -> tuple[str, int]:
        with self._lock:
            number = self.counter
            self.counter += 1
        prompt_id = uuid.uuid4().hex
        self.pending.put((number, prompt_id, validated, {"prompt": prompt, "extra_data": extra_data}))
        return prompt_id, number

    def _loop(self) -> None:
        while True:
            item = self.pending.get()
            if item is None:
                return
            number, prompt_id, validated, request = item
            self.running = prompt_id
            self.interrupt.clear()
            sink = CollectingSink()
            started = time.time()
            result = self.runtime.executor.execute(
                validated,
                prompt_id=prompt_id,
                sink=sink,
                interrupt=self.interrupt,
                extra_data=request["extra_data"],
            )
            self.history[prompt_id] = {
                "prompt": [number, prompt_id, request["prompt"], request["extra_data"], validated.targets],
                "outputs": result.ui_outputs,
                "status": {
                    "status_str": result.status,
                    "completed": result.ok,
                    "messages": [
                        ["execution_start", {"prompt_id": prompt_id, "timestamp": int(started * 1000)}]
                    ]
                    + [
                        [
                            "execution_error",
                            {
                                "node_id": e.node_id,
                                "node_type": e.node_type,
                                "exception_message": str(e.cause),
                            },
                        ]
                        for e in result.errors
                    ],
                },
            }
            self.running = None


RUNTIME_KEY = web.AppKey("runtime", Runtime)


def create_app(runtime: Runtime) -> web.Application:
    worker = PromptWorker(runtime)
    routes = web.RouteTableDef()

    @routes.get("/object_info")
    async def object_info(_: web.Request) -> web.Response:
        return web.json_response(runtime.registry.object_info())

    @routes.get("/object_info/{node}")
    async def object_info_node(request: web.Request) -> web.Response:
        name = request.match_info["node"]
        if name not in runtime.registry:
            return web.json_response({})
        return web.json_response({name: runtime.registry.node_info(name)})

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad_request("invalid_prompt", "request body is not valid JSON")
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, dict):
            return _bad_request("no_prompt", "the request has no 'prompt' object")
        try:
            workflow = parse_api_workflow(prompt)
            targets = body.get("partial_execution_targets")
            validated = validate_workflow(workflow, runtime.registry, targets)
        except WorkflowFormatError as exc:
            return _bad_request("invalid_prompt", str(exc))
        except WorkflowValidationError as exc:
            return web.json_response(
                {"error": exc.prompt_error(), "node_errors": exc.node_errors()}, status=400
            )
        prompt_id, number = worker.submit(validated, prompt, body.get("extra_data") or {})
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    @routes.get("/prompt")
    async def get_prompt(_: web.Request) -> web.Response:
        remaining = worker.pending.qsize() + (1 if worker.running else 0)
        return web.json_response({"exec_info": {"queue_remaining": remaining}})

    @routes.get("/queue")
    async def get_queue(_: web.Request) -> web.Response:
        pending = [
            [n, pid, req["prompt"], req["extra_data"], v.targets]
            for n, pid, v, req in list(worker.pending.queue)
            if pid
        ]
        running = [[0, worker.running, {}, {}, []]] if worker.running else []
        return web.json_response({"queue_running": running, "queue_pending": pending})

    @routes.get("/history")
    async def get_history(_: web.Request) -> web.Response:
        return web.json_response(worker.history)

    @routes.get("/history/{prompt_id}")
    async def get_history_one(request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        return web.json_response(
            {prompt_id: worker.history[prompt_id]} if prompt_id in worker.history else {}
        )

    @routes.post("/interrupt")
    async def interrupt(_: web.Request) -> web.Response:
        worker.interrupt.set()
        return web.Response(status=200)

    @routes.get("/system_stats")
    async def system_stats(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {
                    "os": platform.system().lower(),
                    "python_version": sys.version,
                    "embedded_python": False,
                    "diffgraph_version": "0.1.0",
                },
                "devices": [],
            }
        )

    app = web.Application(client_max_size=64 * 1024**2)
    app.add_routes(routes)
    # Every route also under /api/..., as ComfyUI's newer clients call them.
    api = web.Application()
    api.add_routes(routes)
    app.add_subapp("/api", api)
    app[RUNTIME_KEY] = runtime
    app[WORKER_KEY] = worker

    async def on_startup(_: web.Application) -> None:
        worker.start()

    async def on_cleanup(_: web.Application) -> None:
        worker.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


WORKER_KEY = web.AppKey("worker", PromptWorker)


def _bad_request(kind: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"type": kind, "message": message, "details": "", "extra_info": {}}, "node_errors": {}},
        status=400,
    )


def serve(runtime: Runtime, *, host: str = "127.0.0.1", port: int = 8188) -> None:
    print(f"diffgraph: {len(runtime.registry)} node types; listening on http://{host}:{port}", flush=True)
    web.run_app(create_app(runtime), host=host, port=port, print=None, loop=asyncio.new_event_loop())
