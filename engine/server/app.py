"""The app factory and `serve`: wires the store, queue worker, WebSocket hub, security middleware and
routes (every API route also under `/api/...`, as ComfyUI's newer clients call them).

Nothing starts at import: `create_app` builds objects; the app's lifecycle context (`cleanup_ctx`)
starts the worker and stops it. Handlers are module-level functions that read the app's state through
the typed keys in keys.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from engine.comfy_compat.server_hooks import mount_pack_routes
from engine.runtime import Runtime
from engine.server import (
    routes_files,
    routes_frontend,
    routes_info,
    routes_jobs,
    routes_queue,
    routes_user,
)
from engine.server.config import ServerConfig
from engine.server.keys import CONFIG_KEY, HUB_KEY, QUEUE_KEY, RUNTIME_KEY, STORE_KEY, USER_FILES_KEY
from engine.server.limits import cut_text
from engine.server.protocol import ClientHub
from engine.server.security import BadRequest, Handler, generate_token, make_security_middleware
from engine.server.store import PromptStore
from engine.server.userdata import UserFiles
from engine.server.worker import PromptQueue

log = logging.getLogger("diffgraph.server")

STORE_FILENAME = "diffgraph_queue.sqlite3"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals become clear JSON 4xx; an unexpected failure is logged and answered 500, never fatal."""
    try:
        return await handler(request)
    except BadRequest as exc:
        if exc.status >= 400:
            log.info(
                "request refused",
                extra={"path": request.path, "status": exc.status, "reason": cut_text(str(exc))},
            )
        return exc.response()
    except web.HTTPException:
        raise
    except sqlite3.Error:
        # The write was rolled back and nothing changed; the client may simply try again.
        log.exception("queue file error", extra={"path": request.path})
        return web.json_response(
            {
                "error": {
                    "type": "queue_unavailable",
                    "message": "the queue file could not be read or written; nothing was changed, try again",
                }
            },
            status=503,
        )
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return web.json_response(
            {"error": {"type": "internal_error", "message": "internal server error; see the server log"}},
            status=500,
        )


def create_app(
    runtime: Runtime,
    config: ServerConfig | None = None,
    *,
    store: PromptStore | None = None,
    queue_factory: Callable[[Runtime, PromptStore, ClientHub, ServerConfig], PromptQueue] | None = None,
) -> web.Application:
    """The application: its state under typed keys, module-level handlers, one lifecycle context.
    Builds objects only; the worker starts when the app starts. `store`: an already opened store
    (default: the SQLite file named by the config); the app closes it on shutdown. `queue_factory`:
    another executor for the queue (`--executor ray`: engine.scaleout), default the in-process worker."""
    config = config or ServerConfig()
    runtime.folders.create_directories()
    if store is None:
        store = PromptStore(
            config.store_path or runtime.folders.user / STORE_FILENAME, history_limit=config.history_limit
        )
    hub = ClientHub(features=routes_frontend.server_features(config.max_upload_bytes))
    user_files = UserFiles(runtime.folders.user)
    user_files.create()
    app = web.Application(
        client_max_size=config.max_upload_bytes + 1024**2,
        middlewares=[error_middleware, make_security_middleware(config)],
    )
    app[RUNTIME_KEY] = runtime
    app[CONFIG_KEY] = config
    app[STORE_KEY] = store
    app[HUB_KEY] = hub
    app[QUEUE_KEY] = (queue_factory or PromptQueue)(runtime, store, hub, config)
    app[USER_FILES_KEY] = user_files
    routes_frontend.setup(app)
    api_routes = [
        *routes_queue.ROUTES,
        *routes_files.ROUTES,
        *routes_info.ROUTES,
        *routes_user.ROUTES,
        *routes_frontend.ROUTES,
        *routes_jobs.ROUTES,
    ]
    app.add_routes(api_routes)
    app.add_routes([web.route(r.method, "/api" + r.path, r.handler, **r.kwargs) for r in api_routes])
    # ComfyUI packs' routes (PromptServer.instance.routes), after ours: ours win a clash.
    mount_pack_routes(app, runtime, hub, app[QUEUE_KEY])
    app.add_routes(routes_frontend.STATIC_ROUTES)  # before the canvas's catch-all
    app.add_routes(routes_info.STATIC_ROUTES)
    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_websockets)
    return app


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start-up and shutdown in one place: the outbox, restart recovery and the worker; then (after the
    HTTP side stopped) the worker's graceful stop, the outbox, the store."""
    hub, queue, store = app[HUB_KEY], app[QUEUE_KEY], app[STORE_KEY]
    await hub.start()
    try:
        await asyncio.to_thread(queue.recover)  # reads and writes the store, validates: off the loop
        queue.start()
        yield
    finally:  # also when the start-up failed: nothing stays open
        await asyncio.to_thread(queue.stop)
        await hub.stop()
        await asyncio.to_thread(store.close)


async def close_websockets(app: web.Application) -> None:
    """On shutdown, before aiohttp waits for open connections (aiohttp's advice for WebSockets):
    otherwise every connected client would hold the shutdown for the whole timeout."""
    await app[HUB_KEY].close_sockets()


def prepare_access(config: ServerConfig, announce: Any = print) -> None:
    """Listening beyond loopback requires a token: generate one (announced once) when none was given."""
    if config.access_token is None and not config.loopback_only:
        config.access_token = generate_token()
        announce(
            f"diffgraph: access token (needed because the server listens on {config.host}): {config.access_token}"
        )


def serve(
    runtime: Runtime, config: ServerConfig | None = None, *, queue_factory: Any = None, **legacy: Any
) -> None:
    """Run the server until SIGINT/SIGTERM; then stop gracefully (see PromptQueue.stop)."""
    config = config or ServerConfig(**legacy)
    prepare_access(config)
    app = create_app(runtime, config, queue_factory=queue_factory)
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


__all__ = [
    "create_app",
    "serve",
    "prepare_access",
    "ServerConfig",
    "RUNTIME_KEY",
    "CONFIG_KEY",
    "QUEUE_KEY",
    "STORE_KEY",
    "HUB_KEY",
]
