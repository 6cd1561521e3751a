"""The user's files for the official frontend: saved workflows, settings, keybindings, templates...

One user ("default": diffgraph has no multi-user mode), whose files live in `<user folder>/default/` as in
ComfyUI. Every name from a request is checked (`security.check_relative`) and confined to that folder after
resolving symlinks (`security.confine`); the queue file next to it is out of reach. Writes are atomic
(a temporary file renamed over the target), so a reader never sees half a workflow.

Blocking file work happens in the plain methods here; the routes run them off the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from engine.server.limits import JsonBodyError, loads_json
from engine.server.security import BadRequest, check_relative, confine

log = logging.getLogger("diffgraph.server.userdata")

DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"
# Created up front: the frontend lists them on start-up and a fresh install should not answer 404.
STANDARD_FOLDERS = ("workflows", "subgraphs")


def file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    """ComfyUI's `full_info` entry: path relative to the listed folder, size, modified/created (s)."""
    stat = path.stat()
    return {
        "path": path.relative_to(relative_to).as_posix(),
        "size": stat.st_size,
        "modified": stat.st_mtime,
        "created": stat.st_ctime,
    }


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class UserFiles:
    """The default user's folder: confined paths, listings, settings (one lock serialises the
    read-modify-write of the settings file)."""

    def __init__(self, user_folder: Path):
        self.root = user_folder / DEFAULT_USER
        self._settings_lock = threading.Lock()

    def create(self) -> None:
        for name in STANDARD_FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def path(self, relative: str, what: str = "file") -> Path:
        """The confined path for a client-given relative name (which need not exist)."""
        # ComfyUI decodes a '%' name a second time; check_relative refuses encoded separators instead.
        parts = check_relative(relative, what)
        return confine(self.root, *parts)

    def existing_file(self, relative: str, what: str = "file") -> Path:
        path = self.path(relative, what)
        if not path.is_file():
            raise BadRequest(404, f"no user file {relative!r}", "not_found")
        return path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root.resolve()).as_posix()

    # -- listings ----------------------------------------------------------------------------------

    def _files_under(self, folder: Path, recurse: bool) -> list[Path]:
        """Files in `folder` (below it with `recurse`), hidden names and symlinks leaving the user folder
        skipped, sorted by path."""
        root = self.root.resolve()
        found: list[Path] = []
        walker = folder.rglob("*") if recurse else folder.glob("*")
        for path in walker:
            relative = path.relative_to(folder).parts
            if any(part.startswith(".") for part in relative) or not path.is_file():
                continue
            real = path.resolve()
            if real != root and root not in real.parents:
                continue
            found.append(path)
        return sorted(found)

    def list_dir(self, directory: str, *, recurse: bool, full_info: bool, split: bool) -> list[Any]:
        """GET /userdata?dir=...: paths relative to `dir`; with full_info dicts; with split the path
        followed by its components (ComfyUI's three shapes)."""
        folder = self.path(directory, "dir")
        if not folder.is_dir():
            raise BadRequest(404, f"no user folder {directory!r}", "not_found")
        result: list[Any] = []
        for path in self._files_under(folder, recurse):
            if full_info:
                result.append(file_info(path, folder))
                continue
            relative = path.relative_to(folder).as_posix()
            result.append([relative, *relative.split("/")] if split else relative)
        return result

    def list_v2(self, relative: str) -> list[dict[str, Any]]:
        """GET /v2/userdata?path=...: files and folders below `path`, folders first, by name."""
        folder = self.path(relative, "path") if relative else self.root.resolve()
        if not folder.exists():
            if not relative:
                return []
            raise BadRequest(404, f"no user folder {relative!r}", "not_found")
        if not folder.is_dir():
            raise BadRequest(400, f"{relative!r} is not a folder", "not_a_folder")
        root = self.root.resolve()
        entries: list[dict[str, Any]] = []
        for path in sorted(folder.rglob("*")):
            if any(p.startswith(".") for p in path.relative_to(folder).parts):
                continue
            entry: dict[str, Any] = {"name": path.name, "path": path.relative_to(root).as_posix()}
            if path.is_dir():
                entry["type"] = "directory"
            else:
                stat = path.stat()
                entry.update(type="file", size=stat.st_size, modified=stat.st_mtime)
            entries.append(entry)
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return entries

    # -- files -------------------------------------------------------------------------------------

    def write(self, relative: str, data: bytes, *, overwrite: bool) -> Path:
        path = self.path(relative)
        if path.is_dir():
            raise BadRequest(409, f"{relative!r} is a folder", "is_a_folder")
        if not overwrite and path.exists():
            raise BadRequest(409, f"user file {relative!r} already exists", "file_exists")
        write_atomically(path, data)
        return path

    def delete(self, relative: str) -> None:
        self.existing_file(relative).unlink()

    def move(self, source: str, destination: str, *, overwrite: bool) -> Path:
        origin = self.existing_file(source)
        target = self.path(destination, "destination")
        if target.is_dir():
            raise BadRequest(409, f"{destination!r} is a folder", "is_a_folder")
        if not overwrite and target.exists():
            raise BadRequest(409, f"user file {destination!r} already exists", "file_exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(origin, target)
        log.info("moved a user file", extra={"source": source, "destination": destination})
        return target

    # -- settings ----------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The settings object; an unreadable or corrupted file reads as no settings (logged), as in
        ComfyUI, so a bad file cannot lock the user out of the UI."""
        path = self.root / SETTINGS_FILE
        try:
            value = loads_json(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, JsonBodyError, UnicodeDecodeError) as exc:
            log.error("the settings file is unreadable; using defaults", extra={"reason": str(exc)})
            return {}
        return value if isinstance(value, dict) else {}

    def update_settings(self, changes: dict[str, Any]) -> None:
        with self._settings_lock:
            settings = self.settings()
            settings.update(changes)
            write_atomically(self.root / SETTINGS_FILE, json.dumps(settings, indent=4).encode())
