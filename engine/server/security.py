"""Safe defaults: access token, cross-site request checks, path confinement and upload checks.

Threats and the answer to each (docs/server.md has the user-facing version):
- Another machine on the network: listening beyond loopback requires an access token on every HTTP
  route and the WebSocket (Authorization: Bearer, a `token` query parameter on GET requests such as
  /ws and /view, or the `diffgraph_token` cookie that `GET /?token=...` sets).
- A web page in the user's browser posting to 127.0.0.1 (CSRF): state-changing requests and WebSocket
  upgrades must come from our own origin (Origin / Sec-Fetch-Site checks) and JSON routes refuse the
  "simple" content types a page can send without a CORS pre-flight when the request comes from a browser.
- DNS rebinding (evil.example resolving to 127.0.0.1): on loopback the Host header must be a loopback
  name or an explicitly allowed host.
- File names in requests: confined to their folder after resolving symlinks; `..`, absolute paths,
  backslashes, (double-)encoded separators and NUL are refused before touching the file system.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

from engine.server.config import ServerConfig, is_loopback_address
from engine.server.limits import JsonBodyError, cut_text, loads_json

log = logging.getLogger("diffgraph.server.security")

TOKEN_COOKIE = "diffgraph_token"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Content types a browser page may send cross-site without a CORS pre-flight (Fetch standard).
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|2e|00)", re.IGNORECASE)
_PARSE_ON_LOOP_BYTES = 256 * 1024  # larger JSON bodies are parsed on a worker thread

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def error_response(status: int, message: str, kind: str = "request_refused") -> web.Response:
    """Every refusal says what was wrong; JSON so API clients can show it (cut: messages may quote
    what the client sent)."""
    return web.json_response({"error": {"type": kind, "message": cut_text(message)}}, status=status)


# -- request checks -------------------------------------------------------------------------------


def _host_of(value: str) -> tuple[str, int | None]:
    parts = urlsplit("//" + value)
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or "").lower(), port


def _origin_matches_host(origin: str, host_header: str, config: ServerConfig) -> bool:
    if config.cors_origin and origin.rstrip("/") == config.cors_origin.rstrip("/"):
        return True
    parsed = urlsplit(origin)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False  # includes "null" (sandboxed frames, file: pages)
    try:
        origin_port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return False
    host, host_port = _host_of(host_header)
    host_port = host_port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname.lower() == host and origin_port == host_port


def looks_like_browser(request: web.Request) -> bool:
    """Browsers always send one of these; the urllib/requests scripts ComfyUI's examples use send none."""
    headers = request.headers
    return (
        "Origin" in headers
        or "Referer" in headers
        or "Cookie" in headers
        or any(name.lower().startswith("sec-fetch-") for name in headers)
        or headers.get("User-Agent", "").startswith("Mozilla/")
    )


def token_from(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if request.method == "GET" and "token" in request.query:
        return request.query["token"]
    return request.cookies.get(TOKEN_COOKIE)


def make_security_middleware(config: ServerConfig) -> Any:
    allowed_hosts = {h.lower() for h in config.allowed_hosts}

    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        host_header = request.headers.get("Host", "")
        host, _ = _host_of(host_header)
        # DNS rebinding: on loopback only loopback names (or configured ones) may address us.
        if config.loopback_only and host not in allowed_hosts and not is_loopback_address(host):
            log.warning(
                "refused request for a foreign Host", extra={"host": host_header, "path": request.path}
            )
            return error_response(
                403,
                f"Host {host_header!r} is not a loopback name; this server only answers to localhost. "
                "Behind a proxy, start it with --allowed-host NAME.",
                "host_not_allowed",
            )
        origin = request.headers.get("Origin")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.method in STATE_CHANGING or upgrade:
            if origin is not None and not _origin_matches_host(origin, host_header, config):
                log.warning("refused cross-site request", extra={"origin": origin, "path": request.path})
                return error_response(
                    403, f"cross-site request from origin {origin!r} refused", "cross_site_request"
                )
            if origin is None and request.headers.get("Sec-Fetch-Site") == "cross-site":
                return error_response(403, "cross-site request refused", "cross_site_request")
        cors = (
            config.cors_origin is not None
            and origin is not None
            and origin.rstrip("/") == config.cors_origin.rstrip("/")
        )
        if request.method == "OPTIONS" and cors:
            return _with_cors(web.Response(), config)
        if config.access_token is not None:
            given = token_from(request)
            if given is None or not hmac.compare_digest(given.encode(), config.access_token.encode()):
                return web.json_response(
                    {
                        "error": {
                            "type": "unauthorized",
                            "message": "this server needs its access token: send 'Authorization: Bearer TOKEN', "
                            "or open /?token=TOKEN once in the browser",
                        }
                    },
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="diffgraph"'},
                )
            if request.method == "GET" and request.path == "/" and "token" in request.query:
                # The login step: keep the token in a same-site cookie and drop it from the address bar.
                response = web.Response(status=302, headers={"Location": "/"})
                response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="Strict", path="/")
                return response
        result = await handler(request)
        if cors:
            _with_cors(result, config)
        return result

    return security


def _with_cors(response: web.StreamResponse, config: ServerConfig) -> web.StreamResponse:
    assert config.cors_origin is not None
    response.headers["Access-Control-Allow-Origin"] = config.cors_origin
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
    response.headers["Vary"] = "Origin"
    return response


class BadRequest(Exception):
    """Raised by the helpers below; routes turn it into a 4xx JSON response."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request"):
        super().__init__(message)
        self.status = status
        self.kind = kind

    def response(self) -> web.Response:
        return error_response(self.status, str(self), self.kind)


# A header outside the CORS safelist: a page on another site cannot send it without a pre-flight (which
# this server refuses), so a request carrying it is not a silent cross-site form post. ComfyUI's official
# frontend sends it on every API call — with `text/plain` bodies (fetch's default for a string).
PREFLIGHTED_HEADER = "Comfy-User"


def refuse_simple_browser_body(request: web.Request, expected: str) -> None:
    """415 for a body with a content type a cross-site page can send without a pre-flight, when the
    request comes from a browser and carries no header that would have needed one."""
    content_type = request.content_type.lower() if request.headers.get("Content-Type") else ""
    if (
        content_type in SIMPLE_CONTENT_TYPES
        and looks_like_browser(request)
        and PREFLIGHTED_HEADER not in request.headers
    ):
        raise BadRequest(415, f"this route takes {expected}, not {content_type}", "unsupported_media_type")


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    """The JSON body of a JSON route. A browser sending a form/text content type is refused: that is the
    shape of a cross-site form post. Scripts (no browser headers) may omit or mislabel the type, as
    ComfyUI's own urllib example does."""
    refuse_simple_browser_body(request, "application/json")
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest(400, "the request body is empty; expected a JSON object", "invalid_json")
    try:
        if len(raw) < _PARSE_ON_LOOP_BYTES:
            return loads_json(raw)
        return await asyncio.to_thread(loads_json, raw)  # a large body must not stall the event loop
    except JsonBodyError as exc:
        raise BadRequest(400, f"the request body is not valid JSON: {exc}", "invalid_json") from None


# -- paths ----------------------------------------------------------------------------------------


def check_relative(value: str, what: str, *, allow_empty: bool = False) -> list[str]:
    """Split a client-given relative path into safe components, refusing every escape attempt."""
    if value == "":
        if allow_empty:
            return []
        raise BadRequest(400, f"{what} is empty", "invalid_path")
    if "\x00" in value or any(unicodedata.category(ch) == "Cc" for ch in value):
        raise BadRequest(400, f"{what} contains control characters", "invalid_path")
    if "\\" in value:
        raise BadRequest(400, f"{what} {value!r} contains a backslash; use '/'", "invalid_path")
    if _ENCODED_SEPARATOR.search(value):
        raise BadRequest(400, f"{what} {value!r} contains an encoded separator or dot", "invalid_path")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise BadRequest(400, f"{what} {value!r} must be relative", "invalid_path")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BadRequest(400, f"{what} {value!r} must not contain '..'", "invalid_path")
    if not parts and not allow_empty:
        raise BadRequest(400, f"{what} {value!r} names no file", "invalid_path")
    return parts


def confine(root: Path, *parts: str) -> Path:
    """root/parts..., resolved (symlinks followed) and required to stay inside the resolved root."""
    real_root = root.resolve()
    candidate = real_root.joinpath(*parts).resolve()
    if candidate != real_root and real_root not in candidate.parents:
        raise BadRequest(403, "the path leaves its folder (through a symlink)", "path_outside_folder")
    return candidate


_UNSAFE_NAME_CHARS = re.compile(r"[^\w .()\[\]+\-@,]", re.UNICODE)


def sanitize_filename(name: str) -> str:
    """An upload's file name reduced to a plain base name: no directories, no control or shell-special
    characters, no leading dots, at most 200 characters."""
    # Some clients percent-encode the multipart file name; decode first so "..%2Fx" loses its directory.
    if "\x00" in name or "\x00" in unquote(name):
        # a NUL truncates names in C APIs ("a.png\0.exe"): refused rather than silently repaired
        raise BadRequest(400, "upload file name contains a NUL character", "invalid_filename")
    base = unquote(name).replace("\\", "/").split("/")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = _UNSAFE_NAME_CHARS.sub("_", base).strip().lstrip(".").strip()
    if len(base) > 200:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 200 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else base[:200]
    if not base or base in (".", ".."):
        raise BadRequest(400, f"upload file name {name!r} has no usable characters", "invalid_filename")
    return base
