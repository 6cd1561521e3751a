"""Combo lists of the training nodes, supplied by the runtime (engine.declarations.RuntimeChoices).

Torch-free: the runtime registers these when it builds the node registry, before any model code loads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# RuntimeChoices kinds the training nodes declare.
INPUT_FOLDERS = "input_folders"
LORAS_OR_NONE = "loras_or_none"

# ComfyUI's "no LoRA to continue from" entry of TrainLoraNode's existing_lora (its default).
NO_LORA = "[None]"


def input_folders(input_root: Path) -> list[str]:
    """Sub-folders of the input folder, as ComfyUI's dataset loaders list them (hidden ones left out)."""
    if not input_root.is_dir():
        return []
    names = [p.name for p in input_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(names, key=str.lower)


def training_choice_sources(folders: Any) -> dict[str, Callable[[], list[str]]]:
    """Choice sources for the runtime's registry: input sub-folders, and the LoRA files + "[None]" (ComfyUI's order)."""
    return {
        INPUT_FOLDERS: lambda: input_folders(Path(folders.input)),
        LORAS_OR_NONE: lambda: [*folders.list_files("loras"), NO_LORA],
    }
