"""The server's side of the ComfyUI packs' PromptServer: mounting the routes packs registered into an app,
attaching the app's WebSocket hub and queue to the bridge, and running the packs' on-prompt handlers.
Called by engine/server (app.py, routes_queue.py); only the runtime that loaded the packs is served."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from engine.comfy_compat.binding import binding_of
from engine.comfy_compat.prompt_server import ServerBridge

log = logging.getLogger("diffgraph.comfy_compat.server")


def bridge_for(runtime: Any) -> ServerBridge | None:
    """The bridge of the binding that loaded `runtime`'s packs, or None (no packs were loaded by it)."""
    binding = binding_of(runtime.registry)
    if binding is None:
        return None
    bridge = binding.state.get("prompt_server")
    return bridge if isinstance(bridge, ServerBridge) else None


def mount_pack_routes(app: web.Application, runtime: Any, hub: Any, queue: Any) -> int:
    """Add what packs registered (PromptServer.instance.routes under / and /api, and routes or static
    folders added to the stand-in app) to the real app and attach the hub and queue. Returns the
    number of routes added. Ours are added first, so a pack route on one of our paths never answers
    (aiohttp matches the first), or is refused with a warning when aiohttp sees the clash."""
    bridge = bridge_for(runtime)
    if bridge is None:
        return 0
    added = 0
    definitions: list[web.AbstractRouteDef] = []
    for route in bridge.routes:
        if isinstance(route, web.RouteDef):
            definitions.append(web.route(route.method, "/api" + route.path, route.handler, **route.kwargs))
        definitions.append(route)
    for definition in definitions:
        try:
            app.router.add_routes([definition])
            added += 1
        except (RuntimeError, ValueError) as exc:
            log.warning("a custom node route was not added: %s", exc)
    added += _copy_stand_in(bridge.stand_in, app)
    bridge.attach(app, hub, queue)
    return added


def _copy_stand_in(stand_in: web.Application, app: web.Application) -> int:
    if stand_in is app:
        return 0
    added = 0
    for resource in stand_in.router.resources():
        try:
            if isinstance(resource, web.StaticResource):
                info = resource.get_info()
                app.router.add_static(resource.canonical, info["directory"])
                added += 1
                continue
            for route in resource:
                app.router.add_route(route.method, resource.canonical, route.handler)
                added += 1
        except (RuntimeError, ValueError) as exc:
            log.warning("a custom node route was not added: %s", exc)
    app.middlewares.extend(stand_in.middlewares)
    return added


def run_prompt_handlers(runtime: Any, body: Any) -> Any:
    """The POST /prompt body after the packs' on_prompt handlers (unchanged when there are none)."""
    bridge = bridge_for(runtime)
    return body if bridge is None or not bridge.on_prompt_handlers else bridge.trigger_on_prompt(body)
