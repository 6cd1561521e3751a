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
from engine.server.config import default_web_root
from engine.server.keys import CONFIG_KEY, RUNTIME_KEY
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
        from engine.server.system_stats import system_stats

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


async def object_info(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME_KEY].registry.object_info())


async def object_info_node(request: web.Request) -> web.Response:
    registry = request.app[RUNTIME_KEY].registry
    name = request.match_info["node"]
    if name not in registry:
        return web.json_response({})
    return web.json_response({name: registry.node_info(name)})


async def system_stats(request: web.Request) -> web.Response:
    return web.json_response(system_stats_body(request.app[RUNTIME_KEY]))


async def embeddings(request: web.Request) -> web.Response:
    folders = request.app[RUNTIME_KEY].folders
    return web.json_response(
        [Path(name).with_suffix("").as_posix() for name in folders.list_files("embeddings")]
    )


async def model_kinds(request: web.Request) -> web.Response:
    return web.json_response(sorted(request.app[RUNTIME_KEY].folders.models))


async def model_files(request: web.Request) -> web.Response:
    folders = request.app[RUNTIME_KEY].folders
    kind = request.match_info["folder"]
    if kind not in folders.models:
        raise BadRequest(404, f"unknown model folder {kind!r}; GET /models lists them", "not_found")
    return web.json_response(folders.list_files(kind))


def _web_directories(runtime: Runtime) -> dict[str, Path]:
    """Loaded packs' WEB_DIRECTORY folders by pack name."""
    return {
        pack.name: Path(pack.web_directory)
        for pack in runtime.plugins.packs
        if pack.loaded and pack.web_directory
    }


def _web_root(request: web.Request) -> Path:
    return request.app[CONFIG_KEY].web_root or default_web_root()


async def extensions(request: web.Request) -> web.Response:
    # The UI's own extensions first (the official frontend ships some under extensions/), as ComfyUI lists them.
    own = _web_root(request) / "extensions"
    urls = [f"/extensions/{quote(f)}" for f in web_files(own)] if own.is_dir() else []
    for name, directory in _web_directories(request.app[RUNTIME_KEY]).items():
        if directory.is_dir():
            urls += [f"/extensions/{quote(name)}/{quote(f)}" for f in web_files(directory)]
    return web.json_response(urls)


async def example_workflows(request: web.Request) -> web.Response:
    """Names of the example workflows (UI format; their `.api.json` twins are for scripts)."""
    root = request.app[RUNTIME_KEY].folders.workflows
    names = (
        []
        if root is None or not root.is_dir()
        else sorted(p.name for p in root.glob("*.json") if not p.name.endswith(".api.json"))
    )
    return web.json_response(names)


async def example_workflow(request: web.Request) -> web.StreamResponse:
    root = request.app[RUNTIME_KEY].folders.workflows
    name = request.match_info["name"]
    if root is None or not name.endswith(".json"):
        raise BadRequest(404, f"no example workflow {name!r}", "not_found")
    return serve_static(root, name)


async def plugins(request: web.Request) -> web.Response:
    return web.json_response({"packs": [pack.to_json() for pack in request.app[RUNTIME_KEY].plugins.packs]})


async def extension_file(request: web.Request) -> web.StreamResponse:
    """A plugin's WEB_DIRECTORY file under /extensions/<pack>/..."""
    pack, path = request.match_info["pack"], request.match_info["path"]
    directory = _web_directories(request.app[RUNTIME_KEY]).get(pack)
    if directory is None or not directory.is_dir():
        own = _web_root(request) / "extensions"
        if (own / pack).is_dir():  # the UI's own extensions (a pack of the same name wins, as in ComfyUI)
            return serve_static(own, f"{pack}/{path}")
        raise BadRequest(404, f"no web files for pack {pack!r}", "not_found")
    return serve_static(directory, path)


async def canvas(request: web.Request) -> web.StreamResponse:
    """The web canvas under / (registered after the API routes, so they win)."""
    web_root = _web_root(request)
    relative = request.match_info.get("path", "")
    if relative in ("", "index.html") and not (web_root / "index.html").is_file():
        return web.Response(text=_NOT_INSTALLED, content_type="text/html")
    return serve_static(web_root, relative)


ROUTES = [
    web.get("/object_info", object_info),
    web.get("/object_info/{node}", object_info_node),
    web.get("/system_stats", system_stats),
    web.get("/embeddings", embeddings),
    web.get("/models", model_kinds),
    web.get("/models/{folder}", model_files),
    web.get("/extensions", extensions),
    web.get("/workflows", example_workflows),
    web.get("/workflows/{name}", example_workflow),
    web.get(PLUGINS_ROUTE, plugins),
]

# Not under /api: plugin web files and the canvas (the catch-all last).
STATIC_ROUTES = [
    web.get("/extensions/{pack}/{path:.+}", extension_file),
    web.get("/", canvas),
    web.get("/{path:.+}", canvas),
]
