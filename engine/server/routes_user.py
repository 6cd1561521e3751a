"""The official frontend's user routes, with ComfyUI's shapes: `/users`, `/userdata` (list, read, write,
delete, move), `/v2/userdata`, `/settings`.

Files live in the default user's folder (engine.server.userdata.UserFiles), confined after resolving
symlinks. The frontend posts file bodies and settings as `text/plain` (fetch's default for a string)
with its `Comfy-User` header; `security.refuse_simple_browser_body` accepts that and nothing a
cross-site form could send.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from engine.server.keys import USER_FILES_KEY
from engine.server.security import BadRequest, read_json, refuse_simple_browser_body
from engine.server.userdata import file_info

_NO_CACHE = {"Cache-Control": "no-store"}


def _flag(request: web.Request, name: str, default: bool) -> bool:
    """ComfyUI's boolean query parameters: 'true' (any case) is true; overwrite is true unless 'false'."""
    value = request.query.get(name)
    if value is None:
        return default
    return value.lower() != "false" if default else value.lower() == "true"


async def get_users(request: web.Request) -> web.Response:
    """Single-user mode: settings are stored on the server; `migrated` once the user folder exists
    (until then the frontend moves its browser-stored settings over)."""
    files = request.app[USER_FILES_KEY]
    return web.json_response({"storage": "server", "migrated": files.root.is_dir()})


async def post_users(request: web.Request) -> web.Response:
    await read_json(request, allow_empty=True)
    raise BadRequest(
        400, "diffgraph has a single user; there are no user profiles to create", "multi_user_unsupported"
    )


async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        raise BadRequest(400, "the 'dir' parameter is required", "invalid_request")
    files = request.app[USER_FILES_KEY]
    listing = await asyncio.to_thread(
        files.list_dir,
        directory,
        recurse=_flag(request, "recurse", False),
        full_info=_flag(request, "full_info", False),
        split=_flag(request, "split", False),
    )
    return web.json_response(listing, headers=_NO_CACHE)


async def list_userdata_v2(request: web.Request) -> web.Response:
    files = request.app[USER_FILES_KEY]
    listing = await asyncio.to_thread(files.list_v2, request.query.get("path", ""))
    return web.json_response(listing, headers=_NO_CACHE)


async def get_userdata(request: web.Request) -> web.StreamResponse:
    path = request.app[USER_FILES_KEY].existing_file(request.match_info["file"])
    # nosniff + sandbox: a stored file is data, never a page that could run script on this origin
    headers = {**_NO_CACHE, "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    return web.FileResponse(path, headers=headers)


async def post_userdata(request: web.Request) -> web.Response:
    refuse_simple_browser_body(request, "a file body sent by the frontend")
    files = request.app[USER_FILES_KEY]
    relative = request.match_info["file"]
    body = await request.read()
    path = await asyncio.to_thread(files.write, relative, body, overwrite=_flag(request, "overwrite", True))
    if _flag(request, "full_info", False):
        return web.json_response(await asyncio.to_thread(file_info, path, files.root.resolve()))
    return web.json_response(files.relative(path))


async def delete_userdata(request: web.Request) -> web.Response:
    files = request.app[USER_FILES_KEY]
    await asyncio.to_thread(files.delete, request.match_info["file"])
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    files = request.app[USER_FILES_KEY]
    path = await asyncio.to_thread(
        files.move,
        request.match_info["file"],
        request.match_info["dest"],
        overwrite=_flag(request, "overwrite", True),
    )
    if _flag(request, "full_info", False):
        return web.json_response(await asyncio.to_thread(file_info, path, files.root.resolve()))
    return web.json_response(files.relative(path))


async def get_settings(request: web.Request) -> web.Response:
    files = request.app[USER_FILES_KEY]
    return web.json_response(await asyncio.to_thread(files.settings), headers=_NO_CACHE)


async def get_setting(request: web.Request) -> web.Response:
    files = request.app[USER_FILES_KEY]
    settings = await asyncio.to_thread(files.settings)
    return web.json_response(settings.get(request.match_info["id"]), headers=_NO_CACHE)


async def post_settings(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest(400, "expected a JSON object of setting ids and values", "invalid_request")
    await asyncio.to_thread(request.app[USER_FILES_KEY].update_settings, body)
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    # Any JSON value, `null` included (a reset setting); an empty body is not a value.
    value = await read_json(request)
    await asyncio.to_thread(request.app[USER_FILES_KEY].update_settings, {request.match_info["id"]: value})
    return web.Response(status=200)


ROUTES = [
    web.get("/users", get_users),
    web.post("/users", post_users),
    web.get("/userdata", list_userdata),
    web.get("/v2/userdata", list_userdata_v2),
    web.get("/userdata/{file}", get_userdata),
    web.post("/userdata/{file}", post_userdata),
    web.delete("/userdata/{file}", delete_userdata),
    web.post("/userdata/{file}/move/{dest}", move_userdata),
    web.get("/settings", get_settings),
    web.get("/settings/{id}", get_setting),
    web.post("/settings", post_settings),
    web.post("/settings/{id}", post_setting),
]
