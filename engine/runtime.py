"""Assembling a runtime: folders, the registry with every pack loaded, and an executor.

The CLI and the server build one of these explicitly at start-up; nothing here runs at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.execution.cache import OutputCache
from engine.execution.executor import Executor
from engine.folders import Folders
from engine.plugins.loader import PluginReport, load_all_packs
from engine.registry import NodeRegistry


@dataclass
class Runtime:
    folders: Folders
    registry: NodeRegistry
    plugins: PluginReport
    executor: Executor
    services: dict[str, Any] = field(default_factory=dict)


def build_runtime(
    folders: Folders,
    *,
    load_custom_nodes: bool = True,
    cache: OutputCache | None = None,
    services: dict[str, Any] | None = None,
) -> Runtime:
    registry = NodeRegistry(resolve_files=folders.resolve_choices)
    plugins = load_all_packs(registry, folders.custom_nodes if load_custom_nodes else ())
    all_services: dict[str, Any] = {"folders": folders, **(services or {})}
    executor = Executor(registry, cache, services=all_services)
    return Runtime(folders, registry, plugins, executor, all_services)
