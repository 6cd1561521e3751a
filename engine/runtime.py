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

# Names under which nodes find runtime services (`context.service(NAME)`).
FOLDERS = "folders"
DEVICE = "device"  # engine.memory.devices.DeviceInfo
MODEL_MANAGER = "model_manager"  # engine.memory.manager.ModelManager


@dataclass
class Runtime:
    folders: Folders
    registry: NodeRegistry
    plugins: PluginReport
    executor: Executor
    services: dict[str, Any] = field(default_factory=dict)


def memory_services(options: Any = None) -> dict[str, Any]:
    """Decide the device (CUDA / MPS / CPU, from flags and hardware) and create the model manager.

    Called explicitly at start-up; torch is imported here, not when the engine is imported.
    """
    from engine.memory.devices import MemoryOptions, select_device
    from engine.memory.manager import ModelManager

    device = select_device(options or MemoryOptions())
    return {DEVICE: device, MODEL_MANAGER: ModelManager(device)}


def build_runtime(
    folders: Folders,
    *,
    load_custom_nodes: bool = True,
    cache: OutputCache | None = None,
    services: dict[str, Any] | None = None,
    memory_options: Any = None,
    with_models: bool = True,
) -> Runtime:
    """Registry with every pack loaded, an executor, and the services nodes use.

    `with_models=False` skips device selection (for commands that never run a model, e.g. `nodes`).
    """
    registry = NodeRegistry(resolve_files=folders.resolve_choices)
    plugins = load_all_packs(registry, folders.custom_nodes if load_custom_nodes else ())
    all_services: dict[str, Any] = {FOLDERS: folders}
    if with_models:
        all_services.update(memory_services(memory_options))
    all_services.update(services or {})
    executor = Executor(registry, cache, services=all_services)
    return Runtime(folders, registry, plugins, executor, all_services)
