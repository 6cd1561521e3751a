"""ComfyUI's `comfy` package, as custom node packs import it (thin adapters over diffgraph's engine).

In ComfyUI, by the time packs load, its own start-up has imported most `comfy.*` modules, so a pack may
`import comfy` and then use `comfy.model_management` or `comfy.utils` without importing them. Here they
are imported on first use instead (nothing is imported before a pack asks): a missing attribute that
names a submodule imports it; anything else is an AttributeError (so `hasattr(comfy, "multigpu")` is
False, as in a ComfyUI without that module).
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("_"):  # probes of private or special names import nothing
        raise AttributeError(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # the submodule exists but needs something missing: say what
        raise AttributeError(f"module 'comfy' has no attribute {name!r}") from None
