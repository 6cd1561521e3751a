"""Loading node packs: the built-in pack and every pack in custom_nodes/, all the same way.

A pack is a package folder (with `__init__.py`) or a single `.py` file. It may be native (a module-level
`NODES` list of `api.NodeDefinition`, and optionally `DISPLAY_NAMES`) or ComfyUI-classic
(`NODE_CLASS_MAPPINGS`, `NODE_DISPLAY_NAME_MAPPINGS`, `WEB_DIRECTORY`), or both; or ComfyUI-V3 (an `async def
comfy_entrypoint()` returning a ComfyExtension whose `get_node_list()` gives the node classes; ComfyUI reads it
only when there is no NODE_CLASS_MAPPINGS). V3 classes, in either place, build their own NodeDefinition
(classic.DEFINITION_HOOK). A pack that fails to
import, or whose nodes fail their checks, is recorded with its error and skipped: start-up never stops
for a broken plugin, and the errors are queryable (`PluginReport`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from engine import extensions
from engine.declarations import NodeDefinition
from engine.errors import NodeDefinitionError
from engine.plugins.classic import adapt_classic_node, run_awaitable
from engine.registry import NodeRegistry

# The built-in pack's name in reports and in /object_info's python_module (ComfyUI's value for its own
# nodes), and the private module name it is imported under.
BUILTIN_PACK = "nodes"
BUILTIN_MODULE = "diffgraph_builtin_nodes"
# The package every custom pack is imported under (`diffgraph_custom_nodes.<pack>`); it must be in
# sys.modules for a pack's relative imports (`from . import x`) to resolve.
CUSTOM_PARENT = "diffgraph_custom_nodes"
PRESTARTUP_SCRIPT = "prestartup_script.py"
ENTRYPOINT = "comfy_entrypoint"  # a V3 pack's module-level function returning its ComfyExtension


@dataclass
class PackRecord:
    name: str
    path: str
    builtin: bool = False
    style: str = "native"  # "native" | "classic" | "mixed" | "unknown"
    nodes: list[str] = field(default_factory=list)
    error: str | None = None  # import failure: the pack is not loaded at all
    node_errors: dict[str, str] = field(default_factory=dict)  # per-node problems; other nodes still load
    warnings: list[str] = field(default_factory=list)  # tolerated, as ComfyUI tolerates them
    module: str | None = None  # the module name the pack is imported under
    web_directory: str | None = None
    # Seconds to import the pack and register its nodes (its prestartup script not included); logged at
    # start-up per pack, slowest first (engine.startup), and in the JSON below.
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
            "warnings": list(self.warnings),
            "web_directory": self.web_directory,
            "import_seconds": round(self.import_seconds, 4),
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


def _import_pack(path: Path, module_name: str) -> ModuleType:
    """Import a pack from its path under `module_name` (a child of an importable parent package, so
    relative imports inside the pack work). Stale modules of an earlier load under that name are dropped
    first: a pack's submodules must come from its own folder."""
    parent = module_name.rpartition(".")[0]
    if parent and parent not in sys.modules:
        package = ModuleType(parent, "Holds the custom node packs diffgraph imported.")
        package.__path__ = []  # a package with no folder of its own: packs are imported by path
        sys.modules[parent] = package
    for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
        del sys.modules[name]
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


def pack_module_name(path: Path, taken: set[str]) -> str:
    """The module name a custom pack is imported under: from its folder or file name, so the same pack
    gets the same name on every run; a clash (two folders holding a pack of the same name) gets a
    numbered suffix, in discovery order. The chosen name is added to `taken`."""
    stem = _safe_identifier(path.stem if path.is_file() else path.name)
    name, number = f"{CUSTOM_PARENT}.{stem}", 2
    while name in taken:
        name, number = f"{CUSTOM_PARENT}.{stem}_{number}", number + 1
    taken.add(name)
    return name


def _safe_identifier(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in text)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"p_{cleaned}"


def register_module(registry: NodeRegistry, module: ModuleType, record: PackRecord) -> None:
    """Register the nodes a pack module declares, recording per-node failures instead of raising."""
    native: Iterable[Any] = getattr(module, "NODES", None) or ()
    classic: dict[str, Any] = getattr(module, "NODE_CLASS_MAPPINGS", None) or {}
    display: dict[str, str] = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
    if getattr(module, "NODE_CLASS_MAPPINGS", None) is None and ENTRYPOINT in vars(module):
        classic, display = _entrypoint_nodes(module, record)
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
            definition = (
                item
                if isinstance(item, NodeDefinition)
                else adapt_classic_node(node_type, item[0], item[1], warnings=record.warnings)
            )
            registry.register(definition, source=record.name, builtin=record.builtin)
            record.nodes.append(node_type)
        except NodeDefinitionError as exc:
            record.node_errors[node_type] = str(exc)


def _entrypoint_nodes(module: ModuleType, record: PackRecord) -> tuple[dict[str, Any], dict[str, str]]:
    """The node classes (by their schema's node_id) and display names a pack's comfy_entrypoint gives; a
    failure is recorded on the pack, as ComfyUI logs it and loads nothing from the pack."""
    entrypoint = getattr(module, ENTRYPOINT)
    if not callable(entrypoint):
        record.node_errors[ENTRYPOINT] = f"{ENTRYPOINT} is not callable"
        return {}, {}
    try:
        extension = run_awaitable(entrypoint())
        if not callable(getattr(extension, "get_node_list", None)):
            record.node_errors[ENTRYPOINT] = f"{ENTRYPOINT} did not return a ComfyExtension"
            return {}, {}
        if callable(getattr(extension, "on_load", None)):
            run_awaitable(extension.on_load())
        node_list = run_awaitable(extension.get_node_list())
        if not isinstance(node_list, list):
            record.node_errors[ENTRYPOINT] = f"{ENTRYPOINT} did not return a list of nodes"
            return {}, {}
        classes: dict[str, Any] = {}
        display: dict[str, str] = {}
        for cls in node_list:
            schema = cls.GET_SCHEMA()
            classes[schema.node_id] = cls
            if schema.display_name is not None:
                display[schema.node_id] = schema.display_name
        return classes, display
    except Exception as exc:
        record.node_errors[ENTRYPOINT] = f"error while calling {ENTRYPOINT}: {type(exc).__name__}: {exc}"
        return {}, {}


def builtin_pack_path() -> Path:
    """The built-in pack's folder: `diffgraph_builtin_nodes/` beside the installed `engine` package (a
    wheel), else `nodes/` beside it (a source checkout or an editable install)."""
    beside_engine = Path(__file__).resolve().parents[2]
    for name in (BUILTIN_MODULE, BUILTIN_PACK):
        candidate = beside_engine / name
        if (candidate / "__init__.py").is_file():
            return candidate
    raise ImportError(f"the built-in node pack is missing: no {BUILTIN_MODULE}/ or nodes/ in {beside_engine}")


class BuiltinPackError(RuntimeError):
    """The built-in pack does not import or declares a node wrongly: a bug in this program, so start-up
    stops (a plugin's errors are only recorded). The message names every broken node."""


def builtin_pack_modules(module_name: str = BUILTIN_MODULE, path: Path | None = None) -> list[ModuleType]:
    """The built-in pack's package (from `path`, default `builtin_pack_path()`) and its public modules in
    name order, imported by path once per process under `module_name`; later runtimes reuse them (they
    hold declarations only, no state)."""
    package = sys.modules.get(module_name)
    if package is None:
        package = _import_pack(path or builtin_pack_path(), module_name)
    names = sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")
    )
    return [package] + [importlib.import_module(f"{module_name}.{name}") for name in names]


def builtin_node_module(name: str) -> ModuleType:
    """One module of the built-in pack by its file name (e.g. "latent"), loading the pack if needed."""
    modules = {m.__name__.rsplit(".", 1)[-1]: m for m in builtin_pack_modules()[1:]}
    try:
        return modules[name]
    except KeyError:
        raise ImportError(f"the built-in pack has no module {name!r}; it has {sorted(modules)}") from None


def load_builtin_pack(
    registry: NodeRegistry, report: PluginReport, module_name: str = BUILTIN_MODULE, path: Path | None = None
) -> None:
    """Register the built-in pack's nodes; raises BuiltinPackError if it fails to import or a node's
    declaration is wrong (e.g. an unknown socket type)."""
    record = PackRecord(name=BUILTIN_PACK, path=str(path or builtin_pack_path()), builtin=True)
    report.packs.append(record)
    started = time.perf_counter()
    try:
        modules = builtin_pack_modules(module_name, path)
    except Exception as exc:
        raise BuiltinPackError(f"the built-in node pack ({record.path}) does not import: {exc}") from exc
    for module in modules:
        register_module(registry, module, record)
    record.import_seconds = time.perf_counter() - started
    # What a classic plugin gets away with (a warning) is an error here.
    if record.node_errors or record.warnings:
        problems = "; ".join(
            [*(f"{name}: {error}" for name, error in record.node_errors.items()), *record.warnings]
        )
        raise BuiltinPackError(f"the built-in node pack declares nodes wrongly: {problems}")


def load_custom_packs(
    registry: NodeRegistry,
    report: PluginReport,
    folders: Iterable[Path],
    target: extensions.ExtensionTarget | None = None,
) -> None:
    """Import every pack of the custom_nodes folders, after running all their prestartup scripts (as
    ComfyUI does, so a script can prepare what any pack imports)."""
    paths = [path for folder in folders for path in discover_packs(Path(folder))]
    records = [PackRecord(name=path.stem if path.is_file() else path.name, path=str(path)) for path in paths]
    report.packs.extend(records)
    for path, record in zip(paths, records, strict=True):
        _run_prestartup_script(path, record)
    taken: set[str] = set()
    for path, record in zip(paths, records, strict=True):
        record.module = pack_module_name(path, taken)
        started = time.perf_counter()
        try:
            with extensions.collecting() as added:
                module = _import_pack(path, record.module)
        except BaseException as exc:  # noqa: BLE001 - a plugin's SystemExit must not stop start-up either
            if isinstance(exc, KeyboardInterrupt):
                raise
            record.error = traceback.format_exc()
            record.import_seconds = time.perf_counter() - started
            continue
        register_module(registry, module, record)
        _add_extensions(added, target, record)
        # As ComfyUI times a pack: the import and the registration (classic nodes' INPUT_TYPES run here).
        record.import_seconds = time.perf_counter() - started
        if not record.nodes and not record.node_errors and not added.samplers and not added.schedulers:
            record.warnings.append(
                f"{record.name} registers no node (no NODES list or NODE_CLASS_MAPPINGS dict found)"
            )


def _run_prestartup_script(path: Path, record: PackRecord) -> None:
    """Run a pack folder's prestartup_script.py; a failure is recorded on the pack, which still loads."""
    script = path / PRESTARTUP_SCRIPT
    if not script.is_file():
        return
    name = f"{CUSTOM_PARENT}_prestartup.{_safe_identifier(path.name)}"
    try:
        spec = importlib.util.spec_from_file_location(name, script)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot create an import spec for {script}")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    except BaseException as exc:  # noqa: BLE001 - as for the pack itself: start-up goes on
        if isinstance(exc, KeyboardInterrupt):
            raise
        record.node_errors[PRESTARTUP_SCRIPT] = f"{PRESTARTUP_SCRIPT} raised {type(exc).__name__}: {exc}"


def _add_extensions(
    added: extensions.PackExtensions, target: extensions.ExtensionTarget | None, record: PackRecord
) -> None:
    """Hand a pack's samplers/schedulers to the runtime; a refused one (a taken name) is recorded."""
    if target is None:
        return
    adding: list[tuple[str, str, Callable[[], None]]] = [
        *(("sampler", d.name, partial(target.add_sampler, d)) for d in added.samplers),
        *(("scheduler", d.name, partial(target.add_scheduler, d)) for d in added.schedulers),
    ]
    for what, name, add in adding:
        try:
            add()
        except (ValueError, TypeError) as exc:
            record.node_errors[f"{what} {name}"] = str(exc)


def load_all_packs(
    registry: NodeRegistry,
    custom_folders: Iterable[Path] = (),
    *,
    builtin_module: str | None = BUILTIN_MODULE,
    extensions_target: extensions.ExtensionTarget | None = None,
    prepare: Callable[[], None] | None = None,
) -> PluginReport:
    """Built-in pack first (so no plugin can take a built-in name), then custom_nodes/ folders.

    `builtin_module=None` skips the built-in pack; `extensions_target` receives the samplers and
    schedulers packs register (without one they are dropped); `prepare` runs before any custom pack's
    code (its prestartup script included): the place to create the input/output/temp and model folders,
    which ComfyUI packs list or write to while they import."""
    report = PluginReport()
    if builtin_module:
        load_builtin_pack(registry, report, builtin_module)
    custom_folders = list(custom_folders)
    if prepare is not None and custom_folders:
        prepare()
    load_custom_packs(registry, report, custom_folders, extensions_target)
    return report
