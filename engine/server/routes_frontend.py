"""Routes the official frontend calls besides the queue, files and users, with ComfyUI's shapes:
`/features`, `/i18n`, `/experiment/models[/{folder}]`, `/view_metadata/{folder}`, `/workflow_templates`
(+ a pack's example files), `/global_subgraphs[/{id}]`, and, outside `/api`, `/templates/*` (the optional
`comfyui-workflow-templates` package) and `/internal/*` (logs, folder paths, file lists).

`setup(app)` registers the log buffer (`/internal/logs`) for the app's lifetime.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.folders import WEIGHT_EXTENSIONS
from engine.server import packs_web
from engine.server.frontend import templates_roots
from engine.server.keys import CONFIG_KEY, LOG_BUFFER_KEY, RUNTIME_KEY, USER_FILES_KEY
from engine.server.log_buffer import LogBuffer
from engine.server.routes_info import serve_static
from engine.server.security import BadRequest, check_relative, confine

# ComfyUI reads at most this much of a safetensors header for /view_metadata.
MAX_METADATA_HEADER_BYTES = 1024**2
# Model folders the model library does not show (ComfyUI's list).
HIDDEN_MODEL_FOLDERS = ("configs", "custom_nodes")


def server_features(max_upload_bytes: int) -> dict[str, Any]:
    """What this server supports, for `/features` and the WebSocket `feature_flags` answer. Preview
    frames are the classic ones (no metadata frames); there is no assets API."""
    return {
        "supports_preview_metadata": False,
        "max_upload_size": max_upload_bytes,
        "assets": False,
        "node_replacements": False,
    }


async def features(request: web.Request) -> web.Response:
    return web.json_response(server_features(request.app[CONFIG_KEY].max_upload_bytes))


async def i18n(request: web.Request) -> web.Response:
    packs = request.app[RUNTIME_KEY].plugins.packs
    return web.json_response(await asyncio.to_thread(packs_web.translations, packs))


# -- models -----------------------------------------------------------------------------------------


async def model_folders(request: web.Request) -> web.Response:
    models = request.app[RUNTIME_KEY].folders.models
    return web.json_response(
        [
            {"name": kind, "folders": [str(p) for p in roots]}
            for kind, roots in sorted(models.items())
            if kind not in HIDDEN_MODEL_FOLDERS
        ]
    )


def model_file_entries(roots: list[Path]) -> list[dict[str, Any]]:
    """Every weight file under each root: {name (relative), pathIndex, modified, created, size}."""
    entries: list[dict[str, Any]] = []
    for index, root in enumerate(roots):
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != ".git")
            for filename in sorted(filenames):
                if filename.startswith(".") or not filename.lower().endswith(WEIGHT_EXTENSIONS):
                    continue
                path = Path(dirpath, filename)
                try:
                    stat = path.stat()
                except OSError:  # a broken link: skipped, like ComfyUI
                    continue
                entries.append(
                    {
                        "name": path.relative_to(root).as_posix(),
                        "pathIndex": index,
                        "modified": stat.st_mtime,
                        "created": stat.st_ctime,
                        "size": stat.st_size,
                    }
                )
    return entries


async def model_files(request: web.Request) -> web.Response:
    models = request.app[RUNTIME_KEY].folders.models
    kind = request.match_info["folder"]
    if kind not in models:
        raise BadRequest(
            404, f"unknown model folder {kind!r}; GET /experiment/models lists them", "not_found"
        )
    return web.json_response(await asyncio.to_thread(model_file_entries, list(models[kind])))


def safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The `__metadata__` object of a safetensors file, or None (not safetensors, no metadata, a header
    over 1 MB or malformed)."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                return None
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_METADATA_HEADER_BYTES:
                return None
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


async def view_metadata(request: web.Request) -> web.Response:
    folders = request.app[RUNTIME_KEY].folders
    kind = request.match_info["folder"]
    filename = request.query.get("filename", "")
    if kind not in folders.models or not filename.endswith(".safetensors"):
        raise BadRequest(404, "expected a model folder and a .safetensors filename", "not_found")
    parts = check_relative(filename, "filename")
    path = next(
        (root / Path(*parts) for root in folders.models[kind] if (root / Path(*parts)).is_file()), None
    )
    metadata = None if path is None else await asyncio.to_thread(safetensors_metadata, path)
    if metadata is None:
        raise BadRequest(404, f"no metadata for {filename!r}", "not_found")
    return web.json_response(metadata)


# -- workflow templates and subgraph blueprints ---------------------------------------------------


async def workflow_templates(request: web.Request) -> web.Response:
    packs = request.app[RUNTIME_KEY].plugins.packs
    return web.json_response(await asyncio.to_thread(packs_web.example_workflows, packs))


async def workflow_template_file(request: web.Request) -> web.StreamResponse:
    folder = packs_web.pack_folders(request.app[RUNTIME_KEY].plugins.packs).get(request.match_info["pack"])
    examples = packs_web.example_folder(folder) if folder is not None else None
    if examples is None:
        raise BadRequest(404, f"pack {request.match_info['pack']!r} has no example workflows", "not_found")
    return serve_static(examples, request.match_info["path"])


async def core_templates(request: web.Request) -> web.StreamResponse:
    """The templates browser's files, from the first templates package folder that has the file. Without
    the optional packages the index is an empty list (the frontend shows an empty browser) and anything
    else is 404."""
    relative = request.match_info["path"]
    parts = check_relative(relative, "path")
    roots = templates_roots()
    for root in roots:
        if confine(root, *parts).is_file():
            return serve_static(root, relative)
    if not roots and parts[-1].startswith("index") and parts[-1].endswith(".json"):
        return web.json_response([])
    raise BadRequest(
        404, f"no template file {relative!r} (pip install comfyui-workflow-templates)", "not_found"
    )


async def global_subgraphs(request: web.Request) -> web.Response:
    blueprints = await asyncio.to_thread(
        packs_web.subgraph_blueprints, request.app[RUNTIME_KEY].plugins.packs
    )
    return web.json_response(
        {key: {k: v for k, v in entry.items() if k != "file"} for key, entry in blueprints.items()}
    )


async def global_subgraph(request: web.Request) -> web.Response:
    blueprints = await asyncio.to_thread(
        packs_web.subgraph_blueprints, request.app[RUNTIME_KEY].plugins.packs
    )
    entry = blueprints.get(request.match_info["id"])
    if entry is None:
        raise BadRequest(404, f"no subgraph blueprint {request.match_info['id']!r}", "not_found")
    data = await asyncio.to_thread(entry["file"].read_text, encoding="utf-8")
    return web.json_response({**{k: v for k, v in entry.items() if k != "file"}, "data": data})


# -- /internal ----------------------------------------------------------------------------------------


async def log_buffer_lifetime(app: web.Application) -> AsyncIterator[None]:
    """The buffer listens to diffgraph's loggers while the app runs, and only then."""
    handler = app[LOG_BUFFER_KEY]
    logger = logging.getLogger("diffgraph")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


async def internal_logs(request: web.Request) -> web.Response:
    entries = list(request.app[LOG_BUFFER_KEY].entries)
    return web.json_response("".join(f"{e['t']} - {e['m']}" for e in entries))


async def internal_logs_raw(request: web.Request) -> web.Response:
    size = shutil.get_terminal_size((80, 24))
    return web.json_response(
        {
            "entries": list(request.app[LOG_BUFFER_KEY].entries),
            "size": {"cols": size.columns, "rows": size.lines},
        }
    )


async def internal_logs_subscribe(request: web.Request) -> web.Response:
    """Accepted, but logs are not streamed over the WebSocket: the panel shows what /logs/raw returns."""
    from engine.server.security import read_json

    await read_json(request, allow_empty=True)
    return web.Response(status=200)


async def internal_folder_paths(request: web.Request) -> web.Response:
    folders = request.app[RUNTIME_KEY].folders
    body = {kind: [str(p) for p in roots] for kind, roots in sorted(folders.models.items())}
    body["custom_nodes"] = [str(p) for p in folders.custom_nodes]
    return web.json_response(body)


def _newest_first(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    files = [e for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
    return [e.name for e in sorted(files, key=lambda e: -e.stat().st_mtime)]


async def internal_files(request: web.Request) -> web.Response:
    kind = request.match_info["directory_type"]
    if kind not in ("output", "input", "temp"):
        raise BadRequest(400, "directory type must be output, input or temp", "invalid_type")
    root = confine(request.app[RUNTIME_KEY].folders.roots(kind)[0])
    return web.json_response(await asyncio.to_thread(_newest_first, root))


async def user_css(request: web.Request) -> web.StreamResponse:
    """The stylesheet the frontend's page links: the user's own `user.css` (in the user folder, where
    the frontend's settings also read it), or an empty one."""
    path = request.app[USER_FILES_KEY].path("user.css")  # confined: a symlink out is refused
    if path.is_file():
        return web.FileResponse(path, headers={"Content-Type": "text/css", "Cache-Control": "no-cache"})
    return web.Response(text="", content_type="text/css", headers={"Cache-Control": "no-cache"})


ROUTES = [
    web.get("/features", features),
    web.get("/i18n", i18n),
    web.get("/experiment/models", model_folders),
    web.get("/experiment/models/{folder}", model_files),
    web.get("/view_metadata/{folder}", view_metadata),
    web.get("/workflow_templates", workflow_templates),
    web.get("/workflow_templates/{pack}/{path:.+}", workflow_template_file),
    web.get("/global_subgraphs", global_subgraphs),
    web.get("/global_subgraphs/{id}", global_subgraph),
]

# Not under /api (ComfyUI serves these at their own paths).
STATIC_ROUTES = [
    web.get("/user.css", user_css),
    web.get("/templates/{path:.+}", core_templates),
    web.get("/internal/logs", internal_logs),
    web.get("/internal/logs/raw", internal_logs_raw),
    web.patch("/internal/logs/subscribe", internal_logs_subscribe),
    web.get("/internal/folder_paths", internal_folder_paths),
    web.get("/internal/files/{directory_type}", internal_files),
]


def setup(app: web.Application) -> None:
    """Registers the log buffer for the app's lifetime."""
    app[LOG_BUFFER_KEY] = LogBuffer()
    app.cleanup_ctx.append(log_buffer_lifetime)
