"""`nodes.NODE_CLASS_MAPPINGS`, `nodes.NODE_DISPLAY_NAME_MAPPINGS` and `nodes.EXTENSION_WEB_DIRS` as live
views of one runtime, for ComfyUI packs.

In ComfyUI these are plain dicts the loader fills: packs read them (to find a built-in class, to wrap
another pack's node, to list what is installed) and a few write into them at import time. Here they read
the runtime's registry, so they always list what is registered now: built-in nodes map to their
ComfyUI-shaped classes (engine.comfy_compat.classic_nodes), a pack's node to the class the pack declared.

Writes (decided here, documented in docs/custom_nodes.md):
* `NODE_CLASS_MAPPINGS[name] = cls` for a new name registers `cls` through the classic adapter at once,
  under the pack that wrote it (ComfyUI would load it as a node too). If the pack's own mapping then lists
  the same class under the same name, the loader reports that name as already registered: harmless, the
  node is there. A name that is already registered is NOT replaced (ComfyUI would let a pack silently
  replace a built-in node; diffgraph refuses, as its registry does for every pack) - the write is
  ignored with a warning in the log.
* `NODE_DISPLAY_NAME_MAPPINGS[name] = title` is kept in this view (a title for the canvas is the
  registry's to publish; packs read back what they wrote).
* deleting an entry is refused with a warning: node types are never unregistered while a runtime runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

from engine.comfy_compat.binding import current
from engine.comfy_compat.classic_nodes import ClassFactory
from engine.errors import NodeDefinitionError
from engine.plugins.classic import adapt_classic_node

log = logging.getLogger(__name__)

# Where the plugin loader imports custom packs (engine.plugins.loader.CUSTOM_PARENT).
PACK_PARENT = "diffgraph_custom_nodes"


def pack_modules() -> list[Any]:
    """The top-level modules of the custom packs imported so far (each pack's __init__ or single file)."""
    prefix = PACK_PARENT + "."
    return [
        module
        for name, module in list(sys.modules.items())
        if name.startswith(prefix) and "." not in name[len(prefix) :] and module is not None
    ]


def _pack_of_caller() -> str:
    """The pack a write into the mappings comes from: the nearest calling frame in a pack module (its
    module is diffgraph_custom_nodes.<pack>...), by that name."""
    frame = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith(PACK_PARENT + "."):
            return _pack_name(".".join(module.split(".")[:2]))
        frame = frame.f_back  # type: ignore[assignment]
    return "nodes.NODE_CLASS_MAPPINGS"


def _pack_name(top_module: str) -> str:
    """The pack's folder (or file) name, as the plugin loader records it, from its top module."""
    file = getattr(sys.modules.get(top_module), "__file__", None)
    if not file:
        return top_module.rsplit(".", 1)[-1]
    path = Path(file)
    return path.parent.name if path.name == "__init__.py" else path.stem


class NodeClassMappings(MutableMapping[str, type]):
    """name -> class for every registered node type, read from the registry on every access."""

    def __init__(self, factory: ClassFactory) -> None:
        self.factory = factory
        self.written: dict[str, type] = {}

    @property
    def registry(self) -> Any:
        return self.factory.registry

    def __getitem__(self, name: str) -> type:
        if name in self.written:
            return self.written[name]
        definition = self.registry.get(name)
        if definition is None:
            raise KeyError(name)
        if name in self.factory.classes:
            return self.factory.classes[name]
        declared = self._declared_by_pack(name)
        return declared if declared is not None else self.factory.node_class(name)

    def _declared_by_pack(self, name: str) -> type | None:
        for module in pack_modules():
            mapping = getattr(module, "NODE_CLASS_MAPPINGS", None)
            if isinstance(mapping, dict) and isinstance(mapping.get(name), type):
                return mapping[name]  # type: ignore[no-any-return]
        return None

    def __contains__(self, name: object) -> bool:
        return name in self.written or name in self.registry

    def __iter__(self) -> Iterator[str]:
        names = [d.node_type for d in self.registry]
        return iter(names + [n for n in self.written if n not in self.registry])

    def __len__(self) -> int:
        return len(set(d.node_type for d in self.registry) | set(self.written))

    def __setitem__(self, name: str, cls: type) -> None:
        if name in self.registry:
            if self.get(name) is not cls:
                log.warning(
                    "a pack set nodes.NODE_CLASS_MAPPINGS[%r]; that node type is already registered and is "
                    "not replaced",
                    name,
                )
            return
        source = _pack_of_caller()
        warnings: list[str] = []
        try:
            definition = adapt_classic_node(name, cls, warnings=warnings)
            self.registry.register(definition, source=source)
        except NodeDefinitionError as exc:
            log.warning("%s: nodes.NODE_CLASS_MAPPINGS[%r] is not registered: %s", source, name, exc)
            return
        for message in warnings:
            log.warning("%s: %s", source, message)
        self.written[name] = cls

    def __delitem__(self, name: str) -> None:
        log.warning("a pack deleted nodes.NODE_CLASS_MAPPINGS[%r]; node types stay registered", name)

    def __repr__(self) -> str:
        return f"NodeClassMappings({len(self)} node types)"


class DisplayNameMappings(MutableMapping[str, str]):
    """name -> display name of the registered node types that have one, plus what packs wrote here."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.written: dict[str, str] = {}

    def _titles(self) -> dict[str, str]:
        titles = {d.node_type: d.display_name for d in self.registry if d.display_name}
        titles.update(self.written)
        return titles

    def __getitem__(self, name: str) -> str:
        return self._titles()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._titles())

    def __len__(self) -> int:
        return len(self._titles())

    def __setitem__(self, name: str, title: str) -> None:
        self.written[name] = title

    def __delitem__(self, name: str) -> None:
        self.written.pop(name, None)


class ExtensionWebDirs(MutableMapping[str, str]):
    """pack name -> absolute web directory, for every imported pack that declares WEB_DIRECTORY (as the
    plugin loader records it), plus entries packs add themselves (some register extra folders)."""

    def __init__(self, modules: Callable[[], list[Any]] = pack_modules) -> None:
        self.modules = modules
        self.written: dict[str, str] = {}

    def _dirs(self) -> dict[str, str]:
        dirs: dict[str, str] = {}
        # Only this runtime's packs: sys.modules still holds packs an earlier runtime imported.
        roots = [Path(folder).resolve() for folder in current().folders.custom_nodes]
        for module in self.modules():
            web = getattr(module, "WEB_DIRECTORY", None)
            file = getattr(module, "__file__", None)
            if not isinstance(web, str) or not file:
                continue
            path = Path(file)
            if not any(path.resolve().is_relative_to(root) for root in roots):
                continue
            pack = path.parent.name if path.name == "__init__.py" else path.stem
            dirs[pack] = str((path.parent / web).resolve())
        dirs.update(self.written)
        return dirs

    def __getitem__(self, name: str) -> str:
        return self._dirs()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dirs())

    def __len__(self) -> int:
        return len(self._dirs())

    def __setitem__(self, name: str, path: str) -> None:
        self.written[name] = str(path)

    def __delitem__(self, name: str) -> None:
        self.written.pop(name, None)
