"""Which runtime the ComfyUI environment modules (env/) speak for, and putting them on the import path.

ComfyUI's modules are process-wide singletons (`folder_paths.folder_names_and_paths`,
`PromptServer.instance`), and packs read them at import time. So the runtime that loads custom packs
binds itself here first (`install_environment`), and the env modules read `current()`; a later runtime
in the same process (tests build many) rebinds, and the env modules are re-imported against it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.comfy_compat.folders_adapter import FolderTable
from engine.comfy_compat.prompt_server import ServerBridge

ENV_DIRECTORY = Path(__file__).resolve().parent / "env"


@dataclass
class ComfyBinding:
    """What the env modules adapt: the runtime's folders, registry and services (by the names in
    engine.execution.context: folders, samplers, device, model_manager - the last two absent when the
    runtime runs no model), and state ComfyUI keeps in module globals."""

    folders: Any  # engine.folders.Folders
    registry: Any  # engine.registry.NodeRegistry
    services: dict[str, Any] = field(default_factory=dict)
    # ComfyUI-global state the env modules keep for this runtime (the PromptServer instance, ...).
    state: dict[str, Any] = field(default_factory=dict)


_current: ComfyBinding | None = None


def current() -> ComfyBinding:
    """The binding of the runtime that loaded the packs; an error outside one."""
    if _current is None:
        raise RuntimeError(
            "ComfyUI compatibility modules are used outside a diffgraph runtime: they exist for custom "
            "node packs, which a runtime imports after binding itself (engine.runtime.build_runtime)"
        )
    return _current


def current_or_none() -> ComfyBinding | None:
    """The binding, or None when no runtime loaded packs (for code that must work either way)."""
    return _current


def binding_of(registry: Any) -> ComfyBinding | None:
    """The current binding if it belongs to the runtime whose registry is `registry`, else None (the
    server asks so: only the runtime that loaded the packs serves their routes)."""
    binding = _current
    return binding if binding is not None and binding.registry is registry else None


def env_module_names() -> set[str]:
    """The top-level names env/ provides (folder_paths, nodes, comfy, ...)."""
    names = set()
    for entry in ENV_DIRECTORY.iterdir():
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file():
            names.add(entry.name)
        elif entry.suffix == ".py":
            names.add(entry.stem)
    return names


def install_environment(binding: ComfyBinding) -> None:
    """Bind `binding` and make the env modules importable, freshly: modules imported for an earlier
    binding are dropped from sys.modules so that packs imported from now on see this runtime."""
    global _current
    _current = binding
    _create_state(binding)
    top = env_module_names()
    for name in [n for n in sys.modules if n.split(".", 1)[0] in top]:
        del sys.modules[name]
    entry = str(ENV_DIRECTORY)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)  # first: a pip package called `server` or `nodes` must not shadow ComfyUI's


def _create_state(binding: ComfyBinding) -> None:
    """ComfyUI's process-wide objects, made when the runtime binds (before any pack imports): the live
    folder table of `folder_paths` and the `PromptServer.instance` bridge (headless runs have one too)."""
    if "folder_table" not in binding.state:
        binding.state["folder_table"] = FolderTable(binding.folders)
    if "prompt_server" not in binding.state:
        binding.state["prompt_server"] = ServerBridge()
