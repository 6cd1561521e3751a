"""The direction of imports (DESIGN.md §2) and the absence of import-time side effects, enforced."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# ComfyUI's top-level modules for custom packs (folder_paths, nodes, comfy.*): not engine modules. They
# import each other by ComfyUI's names; engine code never imports them (COMFY_ENVIRONMENT_NAMES).
COMFY_ENV = REPO / "engine" / "comfy_compat" / "env"
COMFY_ENVIRONMENT_NAMES = (
    *("folder_paths", "server", "nodes", "comfy", "comfy_extras", "comfy_api", "comfy_execution"),
    *("latent_preview", "node_helpers", "comfy_config", "app", "utils", "protocol", "execution"),
)


def engine_files() -> list[Path]:
    return sorted(p for p in (REPO / "engine").rglob("*.py") if not p.is_relative_to(COMFY_ENV))


DECLARATIONS_MAY_NOT_IMPORT = (
    "torch",
    *("engine.diffusion", "engine.memory", "engine.handles", "engine.execution", "engine.graph"),
    *("engine.server", "engine.plugins", "engine.api"),
)

# package prefix -> module prefixes it must never import
FORBIDDEN = {
    # tests/ holds test-only code (e.g. tests/factories, the tiny-checkpoint writer): never runtime.
    "engine": ("nodes", "custom_nodes", "tests", *COMFY_ENVIRONMENT_NAMES),
    "engine.diffusion": (
        "engine.graph",
        "engine.execution",
        "engine.server",
        "engine.plugins",
        "engine.registry",
        "engine.runtime",
        "engine.cli",
    ),
    # Model files are pure torch: reading weight files, config inference and layout conversion live in
    # engine.diffusion.checkpoints, which imports the models, never the other way round.
    "engine.diffusion.models": ("engine.diffusion.checkpoints",),
    "engine.diffusion.text": ("engine.diffusion.checkpoints",),
    "engine.memory": ("engine.graph", "engine.execution", "engine.server", "engine.plugins", "engine.cli"),
    # The engine's own layers take node declarations from engine.declarations; engine.api is for packs.
    "engine.graph": (
        "torch",
        "engine.diffusion",
        "engine.memory",
        "engine.execution",
        "engine.server",
        "engine.api",
    ),
    "engine.execution": ("torch", "engine.diffusion", "engine.memory", "engine.server", "engine.api"),
    "engine.registry": ("torch", "engine.diffusion", "engine.memory", "engine.server", "engine.api"),
    "engine.plugins": ("torch", "engine.diffusion", "engine.memory", "engine.server", "engine.api"),
    "engine.api": ("torch", "engine.diffusion", "engine.server"),
    # What registry, graph, execution and plugins build on: plain declarations, no model stack.
    "engine.declarations": DECLARATIONS_MAY_NOT_IMPORT,
    "engine.extensions": DECLARATIONS_MAY_NOT_IMPORT,
    # Runtime model handles (MODEL / CLIP / VAE values) sit on diffusion + memory, below the graph.
    "engine.handles": (
        *("engine.graph", "engine.execution", "engine.server", "engine.plugins", "engine.cli"),
        "engine.comfy_compat",  # ComfyUI's object surface on handles lives in engine.handles.comfy_surface
    ),
    "engine.imageio": ("torch", "engine.graph", "engine.execution", "engine.server", "engine.diffusion"),
    # LoRA training sits beside the handles: models, memory and images, never the graph or the server.
    "engine.training": (
        "engine.graph",
        "engine.server",
        "engine.plugins",
        "engine.cli",
        "engine.comfy_compat",
    ),
    # Device kernels are pure torch under everything else: models and the memory manager use them.
    "engine.kernels": (
        *("engine.diffusion", "engine.memory", "engine.handles", "engine.graph", "engine.execution"),
        *("engine.server", "engine.plugins", "engine.api", "engine.training", "engine.runtime"),
    ),
    # The server never depends on Ray: `--executor ray` hands it a queue factory from engine.scaleout.
    "engine.server": ("engine.scaleout", "ray"),
}


def imported_modules(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def test_layers_import_only_downwards():
    violations = []
    for path in engine_files():
        module = module_name(path)
        for importer, forbidden in FORBIDDEN.items():
            if module != importer and not module.startswith(importer + "."):
                continue
            for name in imported_modules(path, module):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    violations.append(f"{module} imports {name}")
    assert not violations, "\n".join(violations)


def test_node_packs_use_only_the_public_api():
    """Node packs import engine.api (its submodules models / sampling / images included) and engine.types,
    nothing else of the engine; the built-in pack's modules import each other relatively."""
    allowed = ("engine.api", "engine.types")
    violations = []
    for root in (REPO / "nodes", REPO / "custom_nodes" / "example_pack"):
        for path in sorted(root.rglob("*.py")):
            # Relative imports resolve inside a neutral package name, so an absolute `nodes` import stands out.
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            for name in imported_modules(path, ".".join(["pack", *parts])):
                public = name == "engine" or any(name == a or name.startswith(a + ".") for a in allowed)
                if name.startswith("engine") and not public or name == "nodes" or name.startswith("nodes."):
                    violations.append(f"{path.relative_to(REPO)} imports {name}")
    assert not violations, "\n".join(violations)


def test_nothing_imports_the_built_in_pack_as_nodes():
    """The name `nodes` belongs to ComfyUI's module (for compatible packs): the engine, tests and benchmarks
    reach the built-in pack through the plugin loader (`builtin_node_module`), never `import nodes`."""
    violations = []
    for folder in ("engine", "tests", "benchmarks"):
        for path in sorted(p for p in (REPO / folder).rglob("*.py") if not p.is_relative_to(COMFY_ENV)):
            for name in imported_modules(path, module_name(path)):
                if name == "nodes" or name.startswith("nodes."):
                    violations.append(f"{path.relative_to(REPO)} imports {name}")
    assert not violations, "\n".join(violations)


def test_importing_the_engine_has_no_side_effects():
    """No threads, no torch, no logging handlers, no files created by merely importing the engine."""
    code = (
        "import logging, sys, threading, os\n"
        "before = set(os.listdir('.'))\n"
        "import engine.api, engine.cli, engine.runtime, engine.registry, engine.folders\n"
        "import engine.graph.loading, engine.graph.validate, engine.execution.executor, engine.plugins.loader\n"
        "import engine.server.app\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert 'torch' not in sys.modules, 'torch imported at import time'\n"
        "assert not logging.getLogger().handlers, 'logging configured at import time'\n"
        "assert set(os.listdir('.')) == before, 'files created at import time'\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
