"""ComfyUI's `folder_paths`, over the runtime's folders (engine.folders.Folders).

`folder_names_and_paths` is live both ways (engine.comfy_compat.folders_adapter.FolderTable): kinds and
folders packs add are what diffgraph's own nodes and routes list, and the data directories
(`output_directory`, ...) are read from the runtime each time (module attributes via __getattr__).
Names that escape a folder ('..', absolute) are refused with diffgraph's UnsafePathError.
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from engine.comfy_compat import folders_adapter as _fa
from engine.comfy_compat.binding import current as _current
from engine.errors import UnsafePathError
from engine.imageio import expand_prefix as _expand_prefix
from engine.imageio import save_image_path as _save_image_path

_folders = _current().folders
# Packs locate "ComfyUI's root" from this file (os.path.dirname(folder_paths.__file__)) and write there
# (web/extensions/<pack>, saved workflows): that is the runtime's base folder, never the installed engine.
__file__ = str(_folders.base / "folder_paths.py")
folder_names_and_paths: _fa.FolderTable = _current().state["folder_table"]
supported_pt_extensions: set[str] = folder_names_and_paths.shared_extensions
# ComfyUI caches listings by folder mtimes; diffgraph lists afresh. Kept for packs that clear them.
filename_list_cache: dict[str, Any] = {}
extension_mimetypes_cache: dict[str, str] = {"webp": "image", "fbx": "model"}

map_legacy = _fa.map_legacy
recursive_search = _fa.recursive_search
filter_files_extensions = _fa.filter_files_extensions

_DATA_ATTRIBUTES = {
    "output_directory": "output",
    "input_directory": "input",
    "temp_directory": "temp",
    "user_directory": "user",
}


def __getattr__(name: str) -> Any:
    if name in _DATA_ATTRIBUTES:
        return str(getattr(_folders, _DATA_ATTRIBUTES[name]))
    if name == "base_path":
        return str(_folders.base)
    if name == "models_dir":
        return str(_fa.models_root(_folders))
    raise AttributeError(f"module 'folder_paths' has no attribute {name!r}")


class CacheHelper:
    """ComfyUI's listing cache context; listings here are never cached, so it only records activity."""

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}
        self.active = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.cache.get(key, default) if self.active else default

    def set(self, key: str, value: Any) -> None:
        if self.active:
            self.cache[key] = value

    def clear(self) -> None:
        self.cache.clear()

    def __enter__(self) -> CacheHelper:
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        self.clear()


cache_helper = CacheHelper()


# -- data directories ----------------------------------------------------------------------------


def get_output_directory() -> str:
    return str(_folders.output)


def get_input_directory() -> str:
    return str(_folders.input)


def get_temp_directory() -> str:
    return str(_folders.temp)


def get_user_directory() -> str:
    return str(_folders.user)


def set_output_directory(path: str) -> None:
    _folders.output = Path(path).resolve()


def set_input_directory(path: str) -> None:
    _folders.input = Path(path).resolve()


def set_temp_directory(path: str) -> None:
    _folders.temp = Path(path).resolve()


def set_user_directory(path: str) -> None:
    _folders.user = Path(path).resolve()


def get_directory_by_type(type_name: str) -> str | None:
    """The folder of a data type ("output", "temp", "input"); None for anything else."""
    if type_name in ("output", "temp", "input"):
        return str(getattr(_folders, type_name))
    return None


def get_input_subfolders() -> list[str]:
    """Every folder under input/ (relative, '/'-separated, sorted), the root excluded."""
    root = get_input_directory()
    if not os.path.isdir(root):
        return []
    found = []
    for dirpath, _dirs, _files in os.walk(root):
        relative = os.path.relpath(dirpath, root)
        if relative != ".":
            found.append(relative.replace(os.sep, "/"))
    return sorted(found)


def filter_files_content_types(files: list[str], content_types: Collection[str]) -> list[str]:
    """Files whose MIME major type ("image", "video", "audio", "model") is among `content_types`."""
    kept = []
    for name in files:
        extension = name.split(".")[-1]
        kind = extension_mimetypes_cache.get(extension)
        if kind is None:
            mime, _ = mimetypes.guess_type(name, strict=False)
            if not mime:
                continue
            kind = extension_mimetypes_cache[extension] = mime.split("/")[0]
        if kind in content_types:
            kept.append(name)
    return kept


# -- annotated names ("x.png [output]") ----------------------------------------------------------


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """(bare name, the annotated folder) or (name, None) when there is no annotation."""
    for suffix, kind in (("[output]", "output"), ("[input]", "input"), ("[temp]", "temp")):
        if name.endswith(suffix):
            return name[: -len(suffix) - 1], str(getattr(_folders, kind))
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    """The path of a possibly annotated name (input/ by default), refused when it escapes its folder."""
    bare, base = annotated_filepath(name)
    base = base or default_dir or get_input_directory()
    return _fa.confined_join(base, bare, "annotated")


def exists_annotated_filepath(name: str) -> bool:
    """Whether the file exists; a name that escapes its folder does not (packs call this from
    VALIDATE_INPUTS, which then reports the input invalid)."""
    try:
        return os.path.exists(get_annotated_filepath(name))
    except UnsafePathError:
        return False


# -- model folders --------------------------------------------------------------------------------


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    _fa.add_model_folder_path(folder_names_and_paths, folder_name, full_folder_path, is_default)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths[map_legacy(folder_name)][0])


def get_filename_list(folder_name: str) -> list[str]:
    return _fa.filename_list(folder_names_and_paths, folder_name)


def get_filename_list_(folder_name: str) -> tuple[list[str], dict[str, float], float]:
    return get_filename_list(folder_name), {}, time.perf_counter()


def cached_filename_list_(folder_name: str) -> None:
    """ComfyUI's cached listing; diffgraph never caches listings, so there is none."""
    return None


def get_full_path(folder_name: str, filename: str) -> str | None:
    return _fa.full_path(folder_names_and_paths, folder_name, filename)


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


# -- saving ---------------------------------------------------------------------------------------


def get_save_image_path(
    filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str, str]:
    """(full_output_folder, filename, counter, subfolder, filename_prefix) as ComfyUI returns them: the
    counter is one past the highest `<filename>_<digits>_` file in the folder; a prefix that leaves
    `output_dir` is refused."""
    target = _save_image_path(filename_prefix, output_dir, image_width, image_height)
    expanded = _expand_prefix(filename_prefix, image_width, image_height)
    # The folder as ComfyUI spells it: the caller's output_dir joined with the subfolder (so "out/" for none).
    folder = os.path.join(output_dir, target.subfolder)
    return folder, target.filename, target.counter, target.subfolder, expanded
