"""Shared by the env-module tests: a runtime that loaded one small pack, and an event sink that keeps
events and asks for previews (as the server's does)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from engine.folders import Folders
from engine.runtime import Runtime, build_runtime


class PreviewSink:
    wants_previews = True

    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)


def runtime_with_pack(base: Path, name: str, source: str, **options: Any) -> Runtime:
    """A runtime (no models unless asked) whose custom_nodes/<name>/__init__.py is `source`."""
    pack = base / "custom_nodes" / name
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "__init__.py").write_text(textwrap.dedent(source))
    options.setdefault("with_models", False)
    runtime = build_runtime(Folders.create(base), **options)
    record = runtime.plugins.get(name)
    assert record.error is None, record.error
    return runtime
