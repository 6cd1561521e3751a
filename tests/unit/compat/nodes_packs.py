"""Shared by the nodes / sampling tests of the ComfyUI layer: a runtime that loaded small packs written
into a temporary custom_nodes folder, and running an API prompt on it."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.runtime import Runtime, build_runtime


def write_pack(base: Path, name: str, source: str) -> Path:
    """custom_nodes/<name>/__init__.py under `base` holding `source`; returns the pack folder."""
    folder = base / "custom_nodes" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(textwrap.dedent(source))
    return folder


def runtime_with_packs(
    base: Path, packs: dict[str, str], models_dir: Path | None = None, **options: Any
) -> Runtime:
    """A runtime (with models unless told otherwise) that loaded `packs` (name -> source) without errors."""
    for name, source in packs.items():
        write_pack(base, name, source)
    runtime = build_runtime(Folders.create(base, models_directory=models_dir), **options)
    failures = {p.name: (p.error, p.node_errors) for p in runtime.plugins.packs if p.error or p.node_errors}
    assert not failures, failures
    return runtime


def run(runtime: Runtime, prompt: dict[str, Any]) -> Any:
    """Run every node of an API prompt; the result, asserted to be ok."""
    result = runtime.executor.run(parse_api_workflow(prompt), targets=list(prompt))
    assert result.ok, [str(e) for e in result.errors]
    return result
