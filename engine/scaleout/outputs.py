"""Output files: written by a worker into its private staging folders, shipped to the server through
Ray's object store, landed in the server's output/temp folders under the server's own counter.

Why not let workers write the server's output folder directly: save nodes pick the next free counter
(`prefix_00042_.png`) by listing the folder, so two workers saving at once would pick the same name and
overwrite each other; and on a multi-machine cluster the server's folder is not there at all. So every
file a prompt writes travels back with its events, and the server picks its final name as the single
process would (one past the highest counter for that prefix), serialised by one lock.

A cached output node re-sends the UI data naming the file under its staged name; the server remembers
each worker's staged -> landed names so that re-sent UI names the landed file. For that the staged names
must not repeat during a worker's life: a shipped file is truncated, not deleted, so the save nodes'
counters keep counting up (a zero-byte placeholder per output file, in the worker's temp folder).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.folders import Folders
from engine.imageio import save_image_path

FILE_KINDS = ("output", "temp")
# ComfyUI's saved-file names: <prefix>_<counter>_<.ext> (images, animations, latents, models).
_COUNTED = re.compile(r"^(?P<stem>.+)_(?P<counter>\d+)_(?P<ext>\.[^/]*)?$")


@dataclass(frozen=True)
class ShippedFile:
    kind: str  # "output" | "temp"
    subfolder: str  # posix, relative to the kind's folder ("" for its root)
    filename: str
    data: bytes


def ui_files(ui: Any) -> Iterator[dict[str, Any]]:
    """The file entries of a node's UI data: dicts naming a filename of type output or temp, at any depth
    ({"images": [...]}, {"gifs": [...]}, {"audio": [...]}, ...)."""
    if isinstance(ui, dict):
        if isinstance(ui.get("filename"), str) and ui.get("type", "output") in FILE_KINDS:
            yield ui
        for value in ui.values():
            yield from ui_files(value)
    elif isinstance(ui, list | tuple):
        for value in ui:
            yield from ui_files(value)


def _inside(root: Path, subfolder: str, filename: str) -> Path | None:
    path = (root / subfolder / filename).resolve()
    return path if path.is_relative_to(root.resolve()) else None


class Staging:
    """A worker's staging folders (its runtime's output and temp): hands out what a prompt wrote."""

    def __init__(self, folders: Folders) -> None:
        self.roots = {"output": folders.output, "temp": folders.temp}
        self._shipped: set[Path] = set()

    def take(self, ui: Any) -> list[ShippedFile]:
        """The files a node's UI names, read and truncated (see the module docstring)."""
        files = []
        for entry in ui_files(ui):
            kind = entry.get("type", "output")
            path = _inside(self.roots[kind], str(entry.get("subfolder") or ""), entry["filename"])
            if path is not None and path.is_file() and path not in self._shipped:
                files.append(self._ship(kind, path))
        return files

    def sweep(self) -> list[ShippedFile]:
        """Every other file the prompt wrote (nodes that save without naming the file in their UI)."""
        files = []
        for kind, root in self.roots.items():
            if not root.is_dir():
                continue
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if path.resolve() not in self._shipped:
                    files.append(self._ship(kind, path.resolve()))
        return files

    def _ship(self, kind: str, path: Path) -> ShippedFile:
        data = path.read_bytes()
        path.write_bytes(b"")
        self._shipped.add(path)
        rel = path.parent.relative_to(self.roots[kind].resolve()).as_posix()
        return ShippedFile(kind, "" if rel == "." else rel, path.name, data)


class OutputLander:
    """The server side: writes shipped files into its folders and rewrites UI data to the landed names."""

    def __init__(self, folders: Folders) -> None:
        self.folders = folders
        self._lock = threading.Lock()
        # (worker key, kind, subfolder, staged name) -> landed name
        self._names: dict[tuple[str, str, str, str], str] = {}

    def land(self, worker: str, files: list[ShippedFile]) -> None:
        """Write the files (in order: a batch keeps consecutive counters) and remember their names."""
        with self._lock:
            for shipped in files:
                root = self.folders.output if shipped.kind == "output" else self.folders.temp
                name = self._write(root, shipped)
                self._names[(worker, shipped.kind, shipped.subfolder, shipped.filename)] = name

    def rewrite(self, worker: str, ui: Any) -> Any:
        """A copy of UI data naming the landed files (entries of files never shipped stay as they are)."""
        if isinstance(ui, dict):
            out = {key: self.rewrite(worker, value) for key, value in ui.items()}
            if isinstance(ui.get("filename"), str) and ui.get("type", "output") in FILE_KINDS:
                key = (worker, ui.get("type", "output"), str(ui.get("subfolder") or ""), ui["filename"])
                with self._lock:
                    out["filename"] = self._names.get(key, ui["filename"])
            return out
        if isinstance(ui, list):
            return [self.rewrite(worker, value) for value in ui]
        return ui

    def forget(self, worker: str) -> None:
        """A worker restarted: its staging folder (and output cache) are new, so are its names."""
        with self._lock:
            for key in [k for k in self._names if k[0] == worker]:
                del self._names[key]

    def _write(self, root: Path, shipped: ShippedFile) -> str:
        folder = _inside(root, shipped.subfolder, "")
        if folder is None:
            raise ValueError(
                f"a worker shipped a file outside the {shipped.kind} folder: {shipped.subfolder}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        for name in _candidate_names(root, shipped):
            try:
                with open(folder / name, "xb") as handle:  # never overwrite a file already there
                    handle.write(shipped.data)
                return name
            except FileExistsError:
                continue
        raise RuntimeError("unreachable: the candidate names never run out")


def _candidate_names(root: Path, shipped: ShippedFile) -> Iterator[str]:
    """A counted name gets the server's next counter for its prefix; other names stay as they are
    while free, else get `_1`, `_2`, ... before the suffix."""
    match = _COUNTED.match(shipped.filename)
    if match is not None and "%" not in match["stem"]:
        prefix = f"{shipped.subfolder}/{match['stem']}" if shipped.subfolder else match["stem"]
        counter = save_image_path(prefix, root).counter
        width = max(5, len(match["counter"]))
        while True:
            yield f"{match['stem']}_{counter:0{width}}_{match['ext'] or ''}"
            counter += 1
    yield shipped.filename
    stem, dot, suffix = shipped.filename.rpartition(".")
    stem, suffix = (stem, "." + suffix) if dot else (shipped.filename, "")
    number = 1
    while True:
        yield f"{stem}_{number}{suffix}"
        number += 1
