"""Read-only routes: node schema, system stats, model lists, plugin packs; plus the static web canvas and
plugins' web files."""

from __future__ import annotations

import mimetypes
import platform
import sys
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from engine.runtime import DEVICE, MODEL_MANAGER, Runtime
from engine.server.security import BadRequest, check_relative, confine

# A documented, diffgraph-specific route (not ComfyUI's): every pack with its nodes and import errors.
PLUGINS_ROUTE = "/diffgraph/plugins"

_NOT_INSTALLED = """<!doctype html><meta charset="utf-8"><title>diffgraph</title>
<p>diffgraph server is running, but the web canvas is not installed (no <code>web/index.html</code>).
The HTTP and WebSocket API work: see docs/server.md.</p>
"""


def diffgraph_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffgraph")
    except PackageNotFoundError:
        return "unknown"


def system_stats_body(runtime: Runtime) -> dict[str, object]:
    device = runtime.services.get(DEVICE)
    if device is not None:
        from engine.memory.stats import system_stats

        body = system_stats(device, runtime.services.get(MODEL_MANAGER))
    else:  # a runtime without models (tests, `nodes`): no torch to ask
        body = {
            "system": {
                "os": platform.system().lower(),
                "python_version": sys.version,
                "embedded_python": False,
                "argv": list(sys.argv),
            },
            "devices": [],
        }
    system = body["system"]
    assert isinstance(system, dict)
    system["diffgraph_version"] = diffgraph_version()
    return body


def web_files(directory: Path) -> list[str]:
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*.js")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def serve_static(root: Path, relative: str) -> web.StreamResponse:
    parts = check_relative(relative, "path", allow_empty=True)
    path = confine(root, *parts)
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file():
        raise BadRequest(404, f"no file {relative!r}", "not_found")
    content_type, _ = mimetypes.guess_type(path.name)
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if path.suffix in (".js", ".mjs"):
        content_type = "text/javascript"
    if content_type:
        headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)


def add_info_routes(routes: web.RouteTableDef, runtime: Runtime) -> None:
    folders = runtime.folders

    @routes.get("/object_info")
    async def object_info(_: web.Request) -> web.Response:
        return web.json_response(runtime.registry.object_info())

    @routes.get("/object_info/{node}")
    async def object_info_node(request: web.Request) -> web.Response:
        name = request.match_info["node"]
        if name not in runtime.registry:
            return web.json_response({})
        return web.json_response({name: runtime.registry.node_info(name)})

    @routes.get("/system_stats")
    async def system_stats(_: web.Request) -> web.Response:
        return web.json_response(system_stats_body(runtime))

    @routes.get("/embeddings")
    async def embeddings(_: web.Request) -> web.Response:
        return web.json_response(
            [Path(name).with_suffix("").as_posix() for name in folders.list_files("embeddings")]
        )

    @routes.get("/models")
    async def model_kinds(_: web.Request) -> web.Response:
        return web.json_response(sorted(folders.models))

    @routes.get("/models/{folder}")
    async def model_files(request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        if kind not in folders.models:
            raise BadRequest(404, f"unknown model folder {kind!r}; GET /models lists them", "not_found")
        return web.json_response(folders.list_files(kind))

    @routes.get("/extensions")
    async def extensions(_: web.Request) -> web.Response:
        urls = []
        for pack in runtime.plugins.packs:
            if pack.loaded and pack.web_directory and Path(pack.web_directory).is_dir():
                urls += [
                    f"/extensions/{quote(pack.name)}/{quote(f)}" for f in web_files(Path(pack.web_directory))
                ]
        return web.json_response(urls)

    @routes.get("/workflows")
    async def example_workflows(_: web.Request) -> web.Response:
        """Names of the example workflows (UI format; their `.api.json` twins are for scripts)."""
        root = folders.workflows
        names = (
            []
            if root is None or not root.is_dir()
            else sorted(p.name for p in root.glob("*.json") if not p.name.endswith(".api.json"))
        )
        return web.json_response(names)

    @routes.get("/workflows/{name}")
    async def example_workflow(request: web.Request) -> web.StreamResponse:
        root = folders.workflows
        name = request.match_info["name"]
        if root is None or not name.endswith(".json"):
            raise BadRequest(404, f"no example workflow {name!r}", "not_found")
        return serve_static(root, name)

    @routes.get(PLUGINS_ROUTE)
    async def plugins(_: web.Request) -> web.Response:
        return web.json_response({"packs": [pack.to_json() for pack in runtime.plugins.packs]})


def add_static_routes(app: web.Application, runtime: Runtime, web_root: Path) -> None:
    """Plugins' WEB_DIRECTORY files under /extensions/<pack>/..., the canvas under / (registered last so
    API routes win)."""
    web_dirs = {
        pack.name: Path(pack.web_directory)
        for pack in runtime.plugins.packs
        if pack.loaded and pack.web_directory
    }

    async def extension_file(request: web.Request) -> web.StreamResponse:
        directory = web_dirs.get(request.match_info["pack"])
        if directory is None or not directory.is_dir():
            raise BadRequest(404, f"no web files for pack {request.match_info['pack']!r}", "not_found")
        return serve_static(directory, request.match_info["path"])

    async def canvas(request: web.Request) -> web.StreamResponse:
        relative = request.match_info.get("path", "")
        if relative in ("", "index.html") and not (web_root / "index.html").is_file():
            return web.Response(text=_NOT_INSTALLED, content_type="text/html")
        return serve_static(web_root, relative)

    app.router.add_get("/extensions/{pack}/{path:.+}", extension_file)
    app.router.add_get("/", canvas)
    app.router.add_get("/{path:.+}", canvas)
