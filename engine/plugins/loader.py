"""Loading node packs: the built-in pack and every pack in custom_nodes/, all the same way.

A pack is a package folder (with `__init__.py`) or a single `.py` file. It may be native (a module-level
`NODES` list of `api.NodeDefinition`, and optionally `DISPLAY_NAMES`) or ComfyUI-classic
(`NODE_CLASS_MAPPINGS`, `NODE_DISPLAY_NAME_MAPPINGS`, `WEB_DIRECTORY`), or both. A pack that fails to
import, or whose nodes fail their checks, is recorded with its error and skipped: start-up never stops
for a broken plugin, and the errors are queryable (`PluginReport`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.api import NodeDefinition
from engine.errors import NodeDefinitionError
from engine.plugins.classic import adapt_classic_node
from engine.registry import NodeRegistry

BUILTIN_PACK = "nodes"


@dataclass
class PackRecord:
    name: str
    path: str
    builtin: bool = False
    style: str = "native"  # "native" | "classic" | "mixed" | "unknown"
    nodes: list[str] = field(default_factory=list)
    error: str | None = None  # import failure: the pack is not loaded at all
    node_errors: dict[str, str] = field(default_factory=dict)  # per-node problems; other nodes still load
    web_directory: str | None = None
    import_seconds: float = 0.0

    @property
    def loaded(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "builtin": self.builtin,
            "style": self.style,
            "loaded": self.loaded,
            "nodes": list(self.nodes),
            "error": self.error,
            "node_errors": dict(self.node_errors),
            "web_directory": self.web_directory,
        }


@dataclass
class PluginReport:
    packs: list[PackRecord] = field(default_factory=list)

    def failed(self) -> list[PackRecord]:
        return [p for p in self.packs if p.error or p.node_errors]

    def get(self, name: str) -> PackRecord | None:
        return next((p for p in self.packs if p.name == name), None)


def discover_packs(folder: Path) -> list[Path]:
    """Pack paths in a custom_nodes folder, in a stable order; hidden and *.disabled entries are skipped."""
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if entry.name.startswith((".", "__")) or entry.name.endswith(".disabled"):
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file() or entry.is_file() and entry.suffix == ".py":
            found.append(entry)
    return found


def _import_pack(path: Path) -> ModuleType:
    """Import a pack from its path under a private module name, so relative imports inside it work and
    two packs with the same folder name in different locations do not collide."""
    stem = path.stem if path.is_file() else path.name
    module_name = f"diffgraph_custom_nodes.{_safe_identifier(stem)}_{abs(hash(str(path.resolve()))) % 10**8}"
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            module_name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot create an import spec for {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _safe_identifier(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in text)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"p_{cleaned}"


def register_module(registry: NodeRegistry, module: ModuleType, record: PackRecord) -> None:
    """Register the nodes a pack module declares, recording per-node failures instead of raising."""
    native: Iterable[Any] = getattr(module, "NODES", None) or ()
    classic: dict[str, Any] = getattr(module, "NODE_CLASS_MAPPINGS", None) or {}
    display: dict[str, str] = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
    record.style = (
        "mixed" if native and classic else "classic" if classic else "native" if native else "unknown"
    )
    web = getattr(module, "WEB_DIRECTORY", None)
    if isinstance(web, str) and module.__file__:
        record.web_directory = str((Path(module.__file__).parent / web).resolve())
    definitions: list[tuple[str, Any]] = []
    for item in native:
        if isinstance(item, NodeDefinition):
            definitions.append((item.node_type, item))
        else:
            record.node_errors[repr(item)[:80]] = "entry in NODES is not a node definition (use @api.node)"
    for node_type, cls in classic.items():
        definitions.append((node_type, (cls, display.get(node_type))))
    for node_type, item in definitions:
        try:
            definition = item if isinstance(item, NodeDefinition) else adapt_classic_node(node_type, *item)
            registry.register(definition, source=record.name, builtin=record.builtin)
            record.nodes.append(node_type)
        except NodeDefinitionError as exc:
            record.node_errors[node_type] = str(exc)


def load_builtin_pack(registry: NodeRegistry, report: PluginReport, module_name: str = BUILTIN_PACK) -> None:
    record = PackRecord(name=module_name, path=module_name, builtin=True)
    report.packs.append(record)
    try:
        package = importlib.import_module(module_name)
        path = getattr(package, "__path__", [])
        names = sorted(info.name for info in pkgutil.iter_modules(path) if not info.name.startswith("_"))
        modules = [package] + [importlib.import_module(f"{module_name}.{name}") for name in names]
    except Exception:
        record.error = traceback.format_exc()
        return
    for module in modules:
        register_module(registry, module, record)


def load_custom_packs(registry: NodeRegistry, report: PluginReport, folders: Iterable[Path]) -> None:
    import time

    for folder in folders:
        for path in discover_packs(Path(folder)):
            record = PackRecord(name=path.stem if path.is_file() else path.name, path=str(path))
            report.packs.append(record)
            started = time.perf_counter()
            try:
                module = _import_pack(path)
            except BaseException as exc:  # noqa: BLE001 - a plugin's SystemExit must not stop start-up either
                if isinstance(exc, KeyboardInterrupt):
                    raise
                record.error = traceback.format_exc()
                continue
            finally:
                record.import_seconds = time.perf_counter() - started
            register_module(registry, module, record)


def load_all_packs(
    registry: NodeRegistry, custom_folders: Iterable[Path] = (), *, builtin_module: str | None = BUILTIN_PACK
) -> PluginReport:
    """Built-in pack first (so no plugin can take a built-in name), then custom_nodes/ folders."""
    report = PluginReport()
    if builtin_module:
        load_builtin_pack(registry, report, builtin_module)
    load_custom_packs(registry, report, custom_folders)
    return report
