"""Assembling a runtime: folders, the registry with every pack loaded, the services nodes use, an executor.

The CLI and the server build one of these explicitly at start-up; nothing here runs at import (the model
stack is imported inside the functions that need it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.execution.cache import OutputCache
from engine.execution.context import DEVICE, FOLDERS, MODEL_MANAGER, PREVIEWER, SAMPLERS
from engine.execution.executor import Executor
from engine.folders import Folders
from engine.plugins.loader import PluginReport, load_all_packs
from engine.registry import NodeRegistry
from engine.training.choices import training_choice_sources


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


def sampling_library() -> Any:
    """The one sampler/scheduler library of a runtime: the built-in entries, then what packs register.

    The only place the built-in registries are constructed; everything else is handed this library."""
    from engine.diffusion.sampling.registry import default_sampler_registry, default_scheduler_registry
    from engine.handles.sampling import SamplingLibrary

    return SamplingLibrary(default_sampler_registry(), default_scheduler_registry())


def latent_previewer(folders: Folders, method: str = "auto") -> Any:
    """The runtime's sampler-preview renderer for `--preview-method`; TAESD decoders come from the
    vae_approx folders and load on first use."""
    from engine.diffusion.sampling.previewers import LatentPreviewer, find_decoder_file

    def find(name: str) -> Any:
        return find_decoder_file(
            lambda: folders.list_files("vae_approx"), lambda f: folders.full_path("vae_approx", f), name
        )

    return LatentPreviewer(method, find)


def build_runtime(
    folders: Folders,
    *,
    load_custom_nodes: bool = True,
    cache: OutputCache | None = None,
    services: dict[str, Any] | None = None,
    memory_options: Any = None,
    with_models: bool = True,
    preview_method: str = "auto",
) -> Runtime:
    """Registry with every pack loaded, an executor, and the services nodes use.

    `with_models=False` skips device selection (for commands that never run a model, e.g. `nodes`).
    `preview_method` is ComfyUI's --preview-method: auto | latent2rgb | taesd | none.
    """
    samplers = sampling_library()
    registry = NodeRegistry(
        resolve_files=folders.resolve_choices,
        choice_sources={
            "samplers": samplers.sampler_names,
            "schedulers": samplers.scheduler_names,
            **training_choice_sources(folders),
        },
    )
    # The services exist before any pack imports: ComfyUI packs query devices and folders at import time.
    all_services: dict[str, Any] = {FOLDERS: folders, SAMPLERS: samplers}
    if with_models:
        all_services.update(memory_services(memory_options))
        all_services[PREVIEWER] = latent_previewer(folders, preview_method)
    all_services.update(services or {})

    def prepare_for_packs() -> None:
        # ComfyUI packs list or write into input/, output/ and temp/ while they import, and import
        # ComfyUI's own modules (folder_paths, nodes, comfy.*): make the folders, bind those modules.
        from engine.comfy_compat.binding import ComfyBinding, install_environment

        folders.create_directories()
        install_environment(ComfyBinding(folders, registry, all_services))

    plugins = load_all_packs(
        registry,
        folders.custom_nodes if load_custom_nodes else (),
        extensions_target=samplers,
        prepare=prepare_for_packs,
    )
    executor = Executor(registry, cache, services=all_services)
    return Runtime(folders, registry, plugins, executor, all_services)
