"""Image files: reading them into arrays, writing PNGs with the workflow embedded, ComfyUI's file naming.

Pillow + numpy only (no torch): nodes convert the arrays to IMAGE / MASK tensors themselves, and the
CLI and server can read a PNG's embedded workflow without importing a model stack.

Conventions (DESIGN.md §1, ComfyUI's):
- pixels become float32 in 0..1, frames as (N, H, W, 3);
- a mask derived from alpha is `1 - alpha` (opaque = 0, transparent = 1: "paint here"), as ComfyUI's
  LoadImage does, so masks drawn in an image editor's eraser mean "inpaint this";
- saved PNGs carry the API graph as a `prompt` tEXt chunk and each `extra_pnginfo` entry (the UI graph
  under `workflow`) as its own chunk, all JSON, exactly as ComfyUI writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin, UnidentifiedImageError

from engine.errors import DiffgraphError, UnsafePathError

__all__ = [
    "ImageFileError",
    "LoadedImage",
    "SavePath",
    "embedded_workflow",
    "file_digest",
    "png_metadata",
    "png_text_chunks",
    "read_image",
    "read_image_channel",
    "save_image_path",
    "save_png",
    "to_uint8",
]

# Formats whose extra "frames" are not an animation but other views of one picture (ComfyUI skips them).
_SINGLE_PICTURE_FORMATS = frozenset({"MPO"})


class ImageFileError(DiffgraphError, ValueError):
    """An image file cannot be read (missing, corrupt, not an image); the message names the file."""


@dataclass(frozen=True)
class LoadedImage:
    """Frames of one file: `pixels` (N, H, W, 3) float32 0..1 and `masks` (N, H, W) float32 0..1."""

    pixels: np.ndarray
    masks: np.ndarray
    has_alpha: bool
    format: str | None

    @property
    def frame_count(self) -> int:
        return int(self.pixels.shape[0])


# -- reading ----------------------------------------------------------------------------------------


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now so a truncated file fails here, naming the file
    except FileNotFoundError as exc:
        raise ImageFileError(f"image file {path} does not exist") from exc
    except UnidentifiedImageError as exc:
        raise ImageFileError(
            f"{path} is not an image file Pillow can read (unknown or corrupt format)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageFileError(f"cannot read image file {path}: {exc}") from exc
    return image


def _frame_pixels(frame: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 0..1 for any Pillow mode, keeping 16-bit precision where the file has it."""
    if frame.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = np.asarray(frame, dtype=np.uint16).astype(np.float32) / 65535.0
        return np.repeat(gray[..., None], 3, axis=-1)
    if frame.mode == "I":
        # 32-bit integer frames come from 16-bit PNGs (values 0..65535).
        gray = np.asarray(frame, dtype=np.int64).astype(np.float32)
        scale = 65535.0 if gray.max(initial=0.0) > 255.0 else 255.0
        gray = np.clip(gray / scale, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=-1)
    if frame.mode == "F":
        gray = np.clip(np.asarray(frame, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0


def _frame_alpha(frame: Image.Image) -> np.ndarray | None:
    """Alpha in 0..1, or None when the frame has no transparency."""
    if "A" in frame.getbands():
        return np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
    if frame.mode == "P" and "transparency" in frame.info:
        return np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    return None


def read_image(path: str | Path) -> LoadedImage:
    """All frames of an image file (EXIF orientation applied) as pixels and masks from alpha.

    Multi-frame files (GIF, APNG, TIFF, WebP) give one entry per frame; frames whose size differs from
    the first are skipped, as ComfyUI does, because a batch needs one size. Files without alpha give
    all-zero masks of the image's size.
    """
    path = Path(path)
    image = _open(path)
    pixels: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    has_alpha = False
    size: tuple[int, int] | None = None
    try:
        frames = [image] if image.format in _SINGLE_PICTURE_FORMATS else ImageSequence.Iterator(image)
        for raw in frames:
            frame = ImageOps.exif_transpose(raw) or raw
            if size is None:
                size = frame.size
            elif frame.size != size:
                continue
            pixels.append(_frame_pixels(frame))
            alpha = _frame_alpha(frame)
            if alpha is not None:
                has_alpha = True
                masks.append(1.0 - alpha)
            else:
                masks.append(np.zeros((frame.size[1], frame.size[0]), dtype=np.float32))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageFileError(f"cannot read the frames of image file {path}: {exc}") from exc
    if not pixels:
        raise ImageFileError(f"image file {path} has no frames")
    return LoadedImage(np.stack(pixels), np.stack(masks), has_alpha, image.format)


_CHANNELS = {"red": "R", "green": "G", "blue": "B", "alpha": "A"}


def read_image_channel(path: str | Path, channel: str) -> np.ndarray:
    """One channel of the first frame as a mask (H, W) in 0..1 (ComfyUI's LoadImageMask).

    "alpha" gives `1 - alpha` (transparent = masked); a file without alpha gives an all-zero mask.
    """
    path = Path(path)
    if channel not in _CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; choose one of {', '.join(_CHANNELS)}")
    image = _open(path)
    frame = ImageOps.exif_transpose(image) or image
    band = _CHANNELS[channel]
    if band == "A":
        alpha = _frame_alpha(frame)
        if alpha is None:
            return np.zeros((frame.size[1], frame.size[0]), dtype=np.float32)
        return 1.0 - alpha
    if frame.mode.startswith("I") or frame.mode == "F":
        return _frame_pixels(frame)[..., "RGB".index(band)]
    return np.asarray(frame.convert("RGBA").getchannel(band), dtype=np.float32) / 255.0


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content: the fingerprint that makes a changed input image re-run its node."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def png_metadata(path: str | Path) -> dict[str, Any]:
    """The text chunks of a PNG, JSON-decoded where they are JSON (e.g. "prompt", "workflow")."""
    path = Path(path)
    image = _open(path)
    if image.format != "PNG":
        raise ImageFileError(f"{path} is a {image.format} file, not a PNG; only PNGs carry workflows here")
    chunks = getattr(image, "text", None) or {}
    result: dict[str, Any] = {}
    for key, value in chunks.items():
        try:
            result[key] = json.loads(value)
        except (TypeError, ValueError):
            result[key] = value
    return result


def embedded_workflow(path: str | Path) -> Any:
    """The workflow stored in a PNG: the API graph (`prompt` chunk) if present, else the UI graph.

    The API graph is preferred because it is exactly what ran; the UI graph needs a conversion that
    depends on the installed nodes.
    """
    path = Path(path)
    chunks = png_metadata(path)
    for key in ("prompt", "workflow"):
        document = chunks.get(key)
        if isinstance(document, dict) and document:
            return document
    raise ImageFileError(
        f"{path} has no embedded workflow (no 'prompt' or 'workflow' PNG text chunk); "
        "only images saved by SaveImage (here or in ComfyUI) carry one"
    )


# -- writing ----------------------------------------------------------------------------------------


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float 0..1 pixels to uint8 the way ComfyUI saves them: scale by 255, clip, truncate."""
    return np.clip(np.asarray(pixels, dtype=np.float32) * 255.0, 0, 255).astype(np.uint8)


def png_text_chunks(prompt: Any = None, extra_pnginfo: Mapping[str, Any] | None = None) -> dict[str, str]:
    """ComfyUI's PNG text chunks: `prompt` = API graph JSON, one chunk per extra_pnginfo key (`workflow`)."""
    chunks: dict[str, str] = {}
    if prompt is not None:
        chunks["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        chunks[str(key)] = json.dumps(value)
    return chunks


def save_png(
    path: str | Path, pixels: np.ndarray, text: Mapping[str, str] | None = None, *, compress_level: int = 4
) -> None:
    """Write one (H, W, C) image (float 0..1 or uint8; C = 1, 3 or 4) as PNG with tEXt chunks."""
    array = pixels if pixels.dtype == np.uint8 else to_uint8(pixels)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    image = Image.fromarray(array)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    image.save(path, format="PNG", pnginfo=info, compress_level=compress_level)


@dataclass(frozen=True)
class SavePath:
    """Where a batch of images goes: `folder/filename_<counter:05>_.png`, `subfolder` relative to root."""

    folder: Path
    filename: str
    counter: int
    subfolder: str

    def file_name(self, index: int = 0, batch_number: int = 0) -> str:
        stem = self.filename.replace("%batch_num%", str(batch_number))
        return f"{stem}_{self.counter + index:05}_.png"


_DATE_TOKEN = re.compile(r"%date:([^%]+)%")
# The front end's %date:FORMAT% letters, longest first so "yyyy" wins over "yy".
_DATE_PARTS: tuple[tuple[str, Any], ...] = (
    ("yyyy", lambda t: f"{t.tm_year:04}"),
    ("yy", lambda t: f"{t.tm_year % 100:02}"),
    ("MM", lambda t: f"{t.tm_mon:02}"),
    ("M", lambda t: str(t.tm_mon)),
    ("dd", lambda t: f"{t.tm_mday:02}"),
    ("d", lambda t: str(t.tm_mday)),
    ("hh", lambda t: f"{t.tm_hour:02}"),
    ("h", lambda t: str(t.tm_hour)),
    ("mm", lambda t: f"{t.tm_min:02}"),
    ("m", lambda t: str(t.tm_min)),
    ("ss", lambda t: f"{t.tm_sec:02}"),
    ("s", lambda t: str(t.tm_sec)),
)


def _format_date(pattern: str, now: time.struct_time) -> str:
    out = []
    i = 0
    while i < len(pattern):
        for token, render in _DATE_PARTS:
            if pattern.startswith(token, i):
                out.append(render(now))
                i += len(token)
                break
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def expand_prefix(prefix: str, width: int = 0, height: int = 0, now: time.struct_time | None = None) -> str:
    """ComfyUI's filename_prefix variables: %width%, %height%, %year%, %month%, %day%, %hour%, %minute%,
    %second%, and the front end's %date:yyyy-MM-dd% style (expanded here so headless runs match)."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }
    for token, value in values.items():
        prefix = prefix.replace(token, value)
    return _DATE_TOKEN.sub(lambda m: _format_date(m.group(1), now), prefix)


def save_image_path(prefix: str, root: str | Path, width: int = 0, height: int = 0) -> SavePath:
    """Resolve a filename_prefix like ComfyUI: an optional subfolder (confined to `root`) and the next
    free counter, one past the highest `<filename>_<digits>_` file already in that folder."""
    root = Path(root).resolve()
    expanded = expand_prefix(prefix, width, height)
    normalized = os.path.normpath(expanded.replace("\\", "/"))
    subfolder, filename = os.path.split(normalized)
    if not filename or filename in (".", ".."):
        raise UnsafePathError(f"filename_prefix {prefix!r} has no file name part")
    if os.path.isabs(subfolder):
        raise UnsafePathError(f"filename_prefix {prefix!r} must be relative to the output folder")
    folder = (root / subfolder).resolve()
    try:
        folder.relative_to(root)
    except ValueError:
        raise UnsafePathError(
            f"filename_prefix {prefix!r} points outside the output folder {root}; use a name like 'sub/name'"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    highest = 0
    wanted = os.path.normcase(filename)
    for entry in os.listdir(folder):
        head = entry[: len(filename)]
        rest = entry[len(filename) :]
        if os.path.normcase(head) != wanted or not rest.startswith("_"):
            continue
        digits = rest[1:].split("_", 1)[0]
        if digits.isdigit():
            highest = max(highest, int(digits))
    rel = folder.relative_to(root).as_posix()
    return SavePath(folder, filename, highest + 1, "" if rel == "." else rel)
