"""The app factory and `serve`: wires the store, queue worker, WebSocket hub, security middleware and
routes (every API route also under `/api/...`, as ComfyUI's newer clients call them).

Nothing starts at import: `create_app` builds objects, the app's start-up hooks start the worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from engine.runtime import Runtime
from engine.server import routes_files
from engine.server.config import ServerConfig, default_web_root
from engine.server.protocol import ClientHub
from engine.server.routes_info import add_info_routes, add_static_routes
from engine.server.routes_queue import add_queue_routes
from engine.server.security import BadRequest, Handler, generate_token, make_security_middleware
from engine.server.store import PromptStore
from engine.server.worker import PromptQueue

log = logging.getLogger("diffgraph.server")

RUNTIME_KEY = web.AppKey("runtime", Runtime)
CONFIG_KEY = web.AppKey("config", ServerConfig)
QUEUE_KEY = web.AppKey("queue", PromptQueue)
STORE_KEY = web.AppKey("store", PromptStore)
HUB_KEY = web.AppKey("hub", ClientHub)
STORE_FILENAME = "diffgraph_queue.sqlite3"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals become clear JSON 4xx; an unexpected failure is logged and answered 500, never fatal."""
    try:
        return await handler(request)
    except BadRequest as exc:
        if exc.status >= 400:
            log.info(
                "request refused", extra={"path": request.path, "status": exc.status, "reason": str(exc)}
            )
        return exc.response()
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return web.json_response(
            {"error": {"type": "internal_error", "message": "internal server error; see the server log"}},
            status=500,
        )


def create_app(runtime: Runtime, config: ServerConfig | None = None) -> web.Application:
    config = config or ServerConfig()
    runtime.folders.create_directories()
    store = PromptStore(
        config.store_path or runtime.folders.user / STORE_FILENAME, history_limit=config.history_limit
    )
    hub = ClientHub()
    queue = PromptQueue(runtime, store, hub, config)
    folders = runtime.folders

    routes = web.RouteTableDef()
    add_info_routes(routes, runtime)
    add_queue_routes(routes, queue, store)

    @routes.get("/ws")
    async def websocket(request: web.Request) -> web.StreamResponse:
        return await hub.handle(request, queue.status, queue.current)

    @routes.get("/view")
    async def view(request: web.Request) -> web.StreamResponse:
        return routes_files.view(request, folders)

    @routes.post("/upload/image")
    async def upload_image(request: web.Request) -> web.Response:
        return await routes_files.upload(request, folders, config, mask=False)

    @routes.post("/upload/mask")
    async def upload_mask(request: web.Request) -> web.Response:
        return await routes_files.upload(request, folders, config, mask=True)

    app = web.Application(
        client_max_size=config.max_upload_bytes + 1024**2,
        middlewares=[error_middleware, make_security_middleware(config)],
    )
    app.add_routes(routes)
    app.add_routes(
        [web.route(r.method, "/api" + r.path, r.handler) for r in routes if isinstance(r, web.RouteDef)]
    )
    add_static_routes(app, runtime, config.web_root or default_web_root())
    app[RUNTIME_KEY] = runtime
    app[CONFIG_KEY] = config
    app[QUEUE_KEY] = queue
    app[STORE_KEY] = store
    app[HUB_KEY] = hub

    async def on_startup(_: web.Application) -> None:
        await hub.start()
        queue.recover()
        queue.start()

    async def on_shutdown(_: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, queue.stop)
        await hub.stop()

    async def on_cleanup(_: web.Application) -> None:
        store.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def prepare_access(config: ServerConfig, announce: Any = print) -> None:
    """Listening beyond loopback requires a token: generate one (announced once) when none was given."""
    if config.access_token is None and not config.loopback_only:
        config.access_token = generate_token()
        announce(
            f"diffgraph: access token (needed because the server listens on {config.host}): {config.access_token}"
        )


def serve(runtime: Runtime, config: ServerConfig | None = None, **legacy: Any) -> None:
    """Run the server until SIGINT/SIGTERM; then stop gracefully (see PromptQueue.stop)."""
    config = config or ServerConfig(**legacy)
    prepare_access(config)
    app = create_app(runtime, config)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    suffix = f"/?token={config.access_token}" if config.access_token and not config.loopback_only else ""
    print(
        f"diffgraph: {len(runtime.registry)} node types; listening on http://{shown}:{config.port}{suffix}",
        flush=True,
    )
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        print=None,
        shutdown_timeout=5.0,
        access_log=logging.getLogger("diffgraph.server.access"),
        loop=asyncio.new_event_loop(),
    )


__all__ = ["create_app", "serve", "prepare_access", "ServerConfig"]
