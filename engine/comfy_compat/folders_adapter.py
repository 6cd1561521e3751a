"""ComfyUI's `folder_paths.folder_names_and_paths`, live over the runtime's `Folders`.

ComfyUI keeps one process-wide dict `kind -> ([folder paths as str], {extensions})` that packs read and
write at import time: they add kinds (`"ipadapter"`), append folders to a kind's list, add extensions to a
kind's set, or register a new kind sharing another kind's list (ComfyUI-GGUF's `unet_gguf` is the very
list object of `diffusion_models`). Here that table is a view over `Folders.models` (the folders our
own nodes, file combos and HTTP routes use), so whatever a pack registers is seen by both sides:

* each kind's folder list is a `PathList` (a real `list` of `str`, so packs can index, join, append,
  serialize it) that writes every change through to `Folders.models[kind]` (as `Path`s) — for every
  kind sharing that list;
* changes made on the Folders side are picked up when the table is read (`table[kind]` refreshes the
  kind's list from Folders first).

ComfyUI's legacy names "unet" and "clip" are not kinds of the table (`map_legacy` turns them into
"diffusion_models" and "text_encoders"); diffgraph's Folders has them as kinds, kept equal to the
canonical ones when a pack changes those.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, SupportsIndex

from engine.errors import UnsafePathError
from engine.folders import Folders

# ComfyUI's model file extensions (`supported_pt_extensions`); one set object shared by the kinds that
# use it, as in ComfyUI (a pack adding ".gguf" to one of them adds it to all - ComfyUI's behaviour).
SUPPORTED_PT_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")

# ComfyUI's kinds: name -> (sub-folders of models/, extension rule). "pt": the shared model-file set;
# a tuple: that kind's own extensions; "folder": diffusers folders; "" entry: files without extension.
COMFY_KINDS: dict[str, tuple[tuple[str, ...], Any]] = {
    "checkpoints": (("checkpoints",), "pt"),
    "configs": (("configs",), (".yaml",)),
    "loras": (("loras",), "pt"),
    "vae": (("vae",), "pt"),
    "text_encoders": (("text_encoders", "clip"), "pt"),
    "diffusion_models": (("unet", "diffusion_models"), "pt"),
    "clip_vision": (("clip_vision",), "pt"),
    "style_models": (("style_models",), "pt"),
    "embeddings": (("embeddings",), "pt"),
    "diffusers": (("diffusers",), ("folder",)),
    "vae_approx": (("vae_approx",), "pt"),
    "controlnet": (("controlnet", "t2i_adapter"), "pt"),
    "gligen": (("gligen",), "pt"),
    "upscale_models": (("upscale_models",), "pt"),
    "hypernetworks": (("hypernetworks",), "pt"),
    "photomaker": (("photomaker",), "pt"),
    "classifiers": (("classifiers",), ("",)),
    "model_patches": (("model_patches",), "pt"),
    "audio_encoders": (("audio_encoders",), "pt"),
}
LEGACY_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}
CUSTOM_NODES = "custom_nodes"


def map_legacy(kind: str) -> str:
    return LEGACY_NAMES.get(kind, kind)


def models_root(folders: Folders) -> Path:
    """The models/ folder: the parent of the first checkpoints folder (Folders.create puts every kind
    there), else base/models."""
    checkpoints = folders.models.get("checkpoints")
    return Path(checkpoints[0]).parent if checkpoints else folders.base / "models"


class PathList(list[str]):
    """A kind's folder list: a plain list of str whose every change is written through to Folders."""

    def __init__(self, items: Iterable[Any], table: FolderTable | None = None) -> None:
        super().__init__(os.fspath(p) for p in items)
        self._table = table

    def _changed(self) -> None:
        if self._table is not None:
            self._table.push(self)

    def _refill(self, items: Iterable[str]) -> None:
        """Replace the contents without writing back (a refresh from Folders)."""
        super().__init__(items)

    def append(self, item: Any) -> None:
        super().append(os.fspath(item))
        self._changed()

    def insert(self, index: SupportsIndex, item: Any) -> None:
        super().insert(index, os.fspath(item))
        self._changed()

    def extend(self, items: Iterable[Any]) -> None:
        super().extend(os.fspath(p) for p in items)
        self._changed()

    def remove(self, item: Any) -> None:
        super().remove(os.fspath(item))
        self._changed()

    def pop(self, index: SupportsIndex = -1) -> str:
        value = super().pop(index)
        self._changed()
        return value

    def clear(self) -> None:
        super().clear()
        self._changed()

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            super().__setitem__(index, [os.fspath(p) for p in value])
        else:
            super().__setitem__(index, os.fspath(value))
        self._changed()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._changed()

    def __iadd__(self, items: Iterable[Any]) -> PathList:  # type: ignore[override,misc]
        self.extend(items)
        return self

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._changed()

    def reverse(self) -> None:
        super().reverse()
        self._changed()


class FolderTable(MutableMapping[str, tuple[list[str], set[str]]]):
    """`folder_names_and_paths`: kind -> (PathList, extension set), backed by `Folders.models`."""

    def __init__(self, folders: Folders) -> None:
        self.folders = folders
        self.shared_extensions: set[str] = set(SUPPORTED_PT_EXTENSIONS)
        self._entries: dict[str, tuple[PathList, set[str]]] = {}
        root = models_root(folders)
        for kind, (subfolders, rule) in COMFY_KINDS.items():
            for sub in subfolders:
                folders.add_model_path(kind, root / sub)
            self._entries[kind] = (self._list_from_folders(kind), self._extensions(rule))
        for kind in folders.models:  # kinds diffgraph has and ComfyUI does not (none today)
            if kind not in self._entries and kind not in LEGACY_NAMES:
                self._entries[kind] = (self._list_from_folders(kind), self.shared_extensions)
        self._entries[CUSTOM_NODES] = (PathList(folders.custom_nodes, self), set())
        for kind in LEGACY_NAMES.values():
            self.push(self._entries[kind][0])

    def _extensions(self, rule: Any) -> set[str]:
        return self.shared_extensions if rule == "pt" else set(rule)

    def _list_from_folders(self, kind: str) -> PathList:
        return PathList(self.folders.models.get(kind, []), self)

    # -- the mapping ----------------------------------------------------------------------------

    def __getitem__(self, kind: str) -> tuple[list[str], set[str]]:
        paths, extensions = self._entries[kind]
        self._refresh(kind, paths)
        return paths, extensions

    def __setitem__(self, kind: str, value: tuple[Iterable[Any], Iterable[str]]) -> None:
        paths, extensions = value
        if not isinstance(paths, PathList) or paths._table is not self:
            paths = PathList(paths, self)
        if not isinstance(extensions, set):
            extensions = set(extensions)
        self._entries[kind] = (paths, extensions)
        self.push(paths)

    def __delitem__(self, kind: str) -> None:
        del self._entries[kind]
        if kind != CUSTOM_NODES:
            self.folders.models.pop(kind, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, kind: object) -> bool:
        return kind in self._entries

    def __repr__(self) -> str:
        return repr({kind: (list(p), e) for kind, (p, e) in self._entries.items()})

    # -- synchronisation with Folders -------------------------------------------------------------

    def push(self, paths: PathList) -> None:
        """Write a changed list to Folders for every kind that uses it (and the legacy alias kinds)."""
        for kind, (entry, _) in self._entries.items():
            if entry is not paths:
                continue
            as_paths = [Path(p).expanduser() for p in paths]
            if kind == CUSTOM_NODES:
                self.folders.custom_nodes[:] = as_paths
                continue
            self.folders.models[kind] = as_paths
            for legacy, canonical in LEGACY_NAMES.items():
                if canonical == kind:
                    self.folders.models[legacy] = list(as_paths)

    def _refresh(self, kind: str, paths: PathList) -> None:
        source = self.folders.custom_nodes if kind == CUSTOM_NODES else self.folders.models.get(kind)
        if source is None:
            return
        current = [os.fspath(p) for p in source]
        if current != list(paths):
            paths._refill(current)

    def extensions(self, kind: str) -> set[str]:
        return self._entries[map_legacy(kind)][1]


def add_model_folder_path(table: FolderTable, kind: str, path: str, is_default: bool = False) -> None:
    """ComfyUI's add_model_folder_path: append (or with is_default, put first / move first)."""
    kind = map_legacy(kind)
    path = os.fspath(path)
    if kind not in table:
        table[kind] = ([path], set())
        return
    paths = table[kind][0]
    if path in paths:
        if is_default and paths[0] != path:
            paths.remove(path)
            paths.insert(0, path)
    elif is_default:
        paths.insert(0, path)
    else:
        paths.append(path)


def recursive_search(
    directory: str, excluded_dir_names: list[str] | None = None
) -> tuple[list[str], dict[str, float]]:
    """Every file under `directory` (relative paths, following links) and the folders' mtimes."""
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or ())
    files: list[str] = []
    dirs: dict[str, float] = {}
    with contextlib.suppress(OSError):
        dirs[directory] = os.path.getmtime(directory)
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
        subdirs[:] = [d for d in subdirs if d not in excluded]
        files.extend(os.path.relpath(os.path.join(dirpath, name), directory) for name in filenames)
        for sub in subdirs:
            path = os.path.join(dirpath, sub)
            try:
                dirs[path] = os.path.getmtime(path)
            except OSError:
                continue
    return files, dirs


def filter_files_extensions(files: Iterable[str], extensions: Iterable[str]) -> list[str]:
    """Files whose (lower-case) extension is among `extensions`; every file when there are none."""
    wanted = set(extensions)
    return sorted(f for f in files if not wanted or os.path.splitext(f)[-1].lower() in wanted)


def filename_list(table: FolderTable, kind: str) -> list[str]:
    """ComfyUI's get_filename_list: the files of every folder of a kind, filtered by its extensions,
    with '/' separators as our own combos list them. KeyError for an unknown kind, as ComfyUI."""
    paths, extensions = table[map_legacy(kind)]
    found: set[str] = set()
    for folder in paths:
        files, _ = recursive_search(folder, excluded_dir_names=[".git"])
        found.update(f.replace(os.sep, "/") for f in filter_files_extensions(files, extensions))
    return sorted(found)


def full_path(table: FolderTable, kind: str, filename: str) -> str | None:
    """ComfyUI's get_full_path (a file of the kind, or None), with diffgraph's refusal of names that
    escape the folder (absolute, '..', backslashes) instead of ComfyUI's silent clamping."""
    kind = map_legacy(kind)
    if kind not in table:
        return None
    paths = table[kind][0]
    relative = _checked_relative(filename, kind)
    for folder in paths:
        candidate = os.path.join(folder, relative)
        if os.path.isfile(candidate):
            return candidate
    return None


def _checked_relative(name: str, kind: str) -> str:
    if not name or "\x00" in name or "\\" in name:
        raise UnsafePathError(f"invalid file name {name!r}")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise UnsafePathError(f"file name {name!r} must be relative to the {kind} folder, without '..'")
    return os.fspath(relative)


def confined_join(base: str | Path, name: str, kind: str) -> str:
    """base/name, refused when `name` escapes `base` (after resolving symlinks, as for data folders)."""
    relative = _checked_relative(name, kind)
    root = Path(base).resolve()
    candidate = (root / relative).resolve()
    try:
        candidate.relative_to(root)
    except ValueError:
        raise UnsafePathError(f"file name {name!r} points outside the {kind} folder") from None
    return os.path.join(os.fspath(base), relative)
