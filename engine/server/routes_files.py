"""File routes: `GET /view`, `POST /upload/image`, `POST /upload/mask` (ComfyUI's parameters and replies).

Every name from a request goes through `security.check_relative` and `security.confine`; uploads must
decode as a real image within the size limits; the stored name is sanitised.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from engine.folders import IMAGE_EXTENSIONS, Folders
from engine.server.config import ServerConfig
from engine.server.keys import CONFIG_KEY, RUNTIME_KEY
from engine.server.limits import loads_json
from engine.server.security import BadRequest, check_relative, confine, sanitize_filename

FILE_TYPES = ("output", "input", "temp")
# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS), applied before decoding.
MAX_IMAGE_PIXELS = 178_956_970
ACCEPTED_FORMATS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tiff",
}
_MAX_FIELD_BYTES = 64 * 1024
_NAMING_LOCK = threading.Lock()
# What aiohttp's multipart reader raises on a malformed body (ValueError covers its "Reading after EOF",
# "boundary missed", bad charsets and decoding; HttpProcessingError its header parser; AssertionError
# and LookupError its internal checks).
MULTIPART_ERRORS = (ValueError, LookupError, AssertionError, HttpProcessingError)


def split_annotation(name: str) -> tuple[str, str | None]:
    """ComfyUI's annotated names: 'a.png [output]' -> ('a.png', 'output')."""
    for kind in FILE_TYPES:
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def folder_for(folders: Folders, kind: str | None, default: str) -> tuple[Path, str]:
    kind = kind or default
    if kind not in FILE_TYPES:
        raise BadRequest(400, f"type must be one of {', '.join(FILE_TYPES)}, not {kind!r}", "invalid_type")
    return folders.roots(kind)[0], kind


def resolve_file(
    folders: Folders, filename: str, subfolder: str, kind: str | None, default: str
) -> tuple[Path, str]:
    """The confined path of an existing-or-not file named by (filename, subfolder, type)."""
    name, annotated = split_annotation(filename)
    root, kind = folder_for(folders, annotated or kind, default)
    sub_parts = check_relative(subfolder, "subfolder", allow_empty=True)
    name_parts = check_relative(name, "filename")
    if len(name_parts) != 1:
        raise BadRequest(
            400, f"filename {name!r} must be a plain name; put folders in 'subfolder'", "invalid_path"
        )
    return confine(root, *sub_parts, *name_parts), kind


# -- /view ----------------------------------------------------------------------------------------


def _disposition(name: str) -> str:
    safe = name.replace('"', "").replace("\r", "").replace("\n", "")
    return f'filename="{safe}"'


_VIEW_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


def view_file(query: Mapping[str, str], folders: Folders) -> web.StreamResponse:
    """The answer to GET /view (conversions decode images: run off the event loop)."""
    if "filename" not in query:
        raise BadRequest(400, "the 'filename' parameter is required", "invalid_request")
    path, _ = resolve_file(
        folders, query["filename"], query.get("subfolder", ""), query.get("type"), "output"
    )
    if not path.is_file():
        raise BadRequest(404, f"file {query['filename']!r} not found", "not_found")
    headers = {**_VIEW_HEADERS, "Content-Disposition": _disposition(path.name)}
    preview = query.get("preview")
    channel = query.get("channel", "rgba")
    if preview is None and channel == "rgba":
        return web.FileResponse(path, headers=headers)
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.copy()
    except Exception:
        raise BadRequest(
            415, f"{path.name} is not an image, so it cannot be converted", "not_an_image"
        ) from None
    buffer = io.BytesIO()
    if preview is not None:
        kind, _, quality_text = preview.partition(";")
        kind = kind.lower() if kind.lower() in ("webp", "jpeg") else "webp"
        if "a" in query.get("channel", ""):  # an explicitly asked alpha channel
            kind = "webp"  # the only preview format with alpha
        quality = int(quality_text) if quality_text.isdigit() else 90
        if kind == "jpeg" or channel == "rgb":
            image = image.convert("RGB")
        image.save(buffer, format=kind.upper(), quality=max(1, min(quality, 100)))
        content_type = f"image/{kind}"
    elif channel == "rgb":
        image.convert("RGB").save(buffer, format="PNG")
        content_type = "image/png"
    elif channel == "a":
        alpha = image.getchannel("A") if image.mode == "RGBA" else Image.new("L", image.size, 255)
        shown = Image.new("RGBA", image.size)
        shown.putalpha(alpha)
        shown.save(buffer, format="PNG")
        content_type = "image/png"
    else:
        raise BadRequest(400, f"channel must be rgba, rgb or a, not {channel!r}", "invalid_request")
    return web.Response(body=buffer.getvalue(), content_type=content_type, headers=headers)


# -- uploads --------------------------------------------------------------------------------------


async def read_upload(request: web.Request, config: ServerConfig) -> tuple[dict[str, str], str, bytes]:
    """(form fields, file name, file bytes) of a multipart upload, enforcing the size limit while
    streaming (the body is never read past the limit). A body that does not parse as multipart (no
    boundary, cut before the closing boundary, a header line without a colon, a NUL in a header...)
    is the client's error: 400 with what the parser said."""
    limit = config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + _MAX_FIELD_BYTES:
        raise BadRequest(413, _too_large(limit), "upload_too_large")
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(400, "uploads are multipart/form-data with an 'image' file field", "invalid_request")
    try:
        fields, filename, data = await _read_parts(await request.multipart(), limit)
    except BadRequest:
        raise
    except MULTIPART_ERRORS as exc:
        raise BadRequest(
            400, f"malformed multipart body ({type(exc).__name__}: {exc})", "invalid_multipart"
        ) from None
    if filename is None:
        raise BadRequest(400, "the upload has no 'image' file field", "invalid_request")
    return fields, filename, data


async def _read_parts(reader: MultipartReader, limit: int) -> tuple[dict[str, str], str | None, bytes]:
    fields: dict[str, str] = {}
    filename, data = None, b""
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            raise BadRequest(400, "nested multipart bodies are not accepted", "invalid_multipart")
        if part.name == "image" and part.filename is not None:
            chunks, size = [], 0
            while chunk := await part.read_chunk(256 * 1024):
                size += len(chunk)
                if size > limit:
                    raise BadRequest(413, _too_large(limit), "upload_too_large")
                chunks.append(chunk)
            filename, data = part.filename, b"".join(chunks)
        else:
            raw = b""
            while chunk := await part.read_chunk(_MAX_FIELD_BYTES):
                raw += chunk
                if len(raw) > _MAX_FIELD_BYTES:
                    raise BadRequest(413, f"form field {part.name!r} is too long", "upload_too_large")
            fields[part.name or ""] = raw.decode("utf-8", errors="replace")
    return fields, filename, data


def _too_large(limit: int) -> str:
    return f"upload larger than the limit of {limit / 1024**2:.1f} MB (server option --max-upload-size)"


def check_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """(Pillow format, size) of bytes that fully decode as an accepted image; BadRequest otherwise."""
    from PIL import Image

    if not data:
        raise BadRequest(400, "the uploaded file is empty", "not_an_image")
    try:
        # Pillow refuses images over twice its pixel limit inside open(): a bomb, not a non-image.
        with Image.open(io.BytesIO(data)) as probe:
            kind, size = probe.format or "", probe.size
            if size[0] * size[1] > MAX_IMAGE_PIXELS:
                raise BadRequest(
                    413, f"image of {size[0]}x{size[1]} pixels is too large to decode", "image_too_large"
                )
            probe.verify()
        with Image.open(io.BytesIO(data)) as full:
            full.load()  # verify() does not decode pixel data; truncated files fail here
    except BadRequest:
        raise
    except Image.DecompressionBombError as exc:
        raise BadRequest(413, f"image is too large to decode ({exc})", "image_too_large") from None
    except Exception as exc:
        raise BadRequest(
            415, f"the uploaded file is not a readable image ({type(exc).__name__}: {exc})", "not_an_image"
        ) from None
    if kind not in ACCEPTED_FORMATS:
        raise BadRequest(
            415, f"image format {kind or 'unknown'} is not accepted; use PNG, JPEG or WEBP", "not_an_image"
        )
    return kind, size


def _target_name(filename: str, kind: str) -> str:
    name = sanitize_filename(filename)
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        name += ACCEPTED_FORMATS[kind]
    return name


def store_upload(folders: Folders, fields: dict[str, str], name: str, payload: bytes) -> dict[str, Any]:
    """Write `payload` as `name` under (type, subfolder); ComfyUI's renaming and duplicate rules."""
    root, kind = folder_for(folders, fields.get("type") or None, "input")
    subfolder = fields.get("subfolder", "")
    sub_parts = check_relative(subfolder, "subfolder", allow_empty=True)
    directory = confine(root, *sub_parts)
    directory.mkdir(parents=True, exist_ok=True)
    directory = confine(root, *sub_parts)  # re-check: a component may have been a symlink
    overwrite = fields.get("overwrite", "").lower() in ("true", "1")
    target = confine(directory, name)
    if not overwrite:
        stem, suffix = os.path.splitext(name)
        counter = 1
        while target.exists():
            if target.is_file() and target.read_bytes() == payload:
                break  # the same file is already there under this name: reuse it
            target = confine(directory, f"{stem} ({counter}){suffix}")
            counter += 1
    if not (target.exists() and target.read_bytes() == payload):
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(payload)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return {"name": target.name, "subfolder": "/".join(sub_parts), "type": kind}


def merge_mask(folders: Folders, original_ref_text: str | None, mask_bytes: bytes) -> bytes:
    """ComfyUI's /upload/mask: the original image (named by `original_ref`) with the uploaded image's
    alpha channel as its new alpha, as PNG, keeping the original's PNG text chunks (workflow metadata)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if not original_ref_text:
        raise BadRequest(
            400, 'a mask upload needs \'original_ref\' ({"filename", "subfolder", "type"})', "invalid_request"
        )
    try:
        ref = loads_json(original_ref_text)
        if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
            raise ValueError("no filename")
    except ValueError as exc:  # JsonBodyError included
        raise BadRequest(
            400, f"original_ref is not a JSON object with a filename ({exc})", "invalid_request"
        ) from None
    path, _ = resolve_file(
        folders, ref["filename"], str(ref.get("subfolder") or ""), ref.get("type"), "output"
    )
    if not path.is_file():
        raise BadRequest(404, f"the original image {ref['filename']!r} was not found", "not_found")
    with Image.open(path) as original:
        metadata = PngInfo()
        for key, value in getattr(original, "text", {}).items():
            metadata.add_text(key, value)
        merged = original.convert("RGBA")
    with Image.open(io.BytesIO(mask_bytes)) as mask_image:
        alpha = mask_image.convert("RGBA").getchannel("A")
    if alpha.size != merged.size:
        alpha = alpha.resize(merged.size, Image.Resampling.BILINEAR)
    merged.putalpha(alpha)
    buffer = io.BytesIO()
    merged.save(buffer, format="PNG", compress_level=4, pnginfo=metadata)
    return buffer.getvalue()


def _store_image(
    folders: Folders, fields: dict[str, str], filename: str, data: bytes, mask: bool
) -> dict[str, Any]:
    """Check, (for a mask) merge and write an upload: CPU and disk work, run off the event loop."""
    kind, _ = check_image(data)
    name = _target_name(filename, kind)
    if mask:
        data = merge_mask(folders, fields.get("original_ref"), data)
        name = Path(name).stem + ".png"
    with _NAMING_LOCK:  # two uploads of one name must not both pick the same free name
        return store_upload(folders, fields, name, data)


async def _upload(request: web.Request, *, mask: bool) -> web.Response:
    fields, filename, data = await read_upload(request, request.app[CONFIG_KEY])
    folders = request.app[RUNTIME_KEY].folders
    return web.json_response(await asyncio.to_thread(_store_image, folders, fields, filename, data, mask))


async def upload_image(request: web.Request) -> web.Response:
    return await _upload(request, mask=False)


async def upload_mask(request: web.Request) -> web.Response:
    return await _upload(request, mask=True)


async def view(request: web.Request) -> web.StreamResponse:
    return await asyncio.to_thread(view_file, request.query, request.app[RUNTIME_KEY].folders)


ROUTES = [
    web.get("/view", view),
    web.post("/upload/image", upload_image),
    web.post("/upload/mask", upload_mask),
]
