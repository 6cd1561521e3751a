"""What the node tests share: the built-in pack's modules (loaded by path, as the runtime loads them) and a
real ExecutionContext whose progress events are recorded."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from engine.execution.context import FOLDERS, MODEL_MANAGER, SAMPLERS, ExecutionContext, InterruptFlag
from engine.execution.events import NodeProgress
from engine.plugins.loader import builtin_node_module
from engine.runtime import sampling_library
from tests.unit.engine.event_sinks import CollectingSink


def builtin(name: str) -> ModuleType:
    """A module of the built-in pack (nodes/<name>.py) under its private import name."""
    return builtin_node_module(name)


class RecordingSink(CollectingSink):
    """Records events and shows previews (as the server's sink does); sets the interrupt flag once
    `stop_after` progress reports arrived, so the next report raises ExecutionInterrupted."""

    wants_previews = True

    def __init__(self, interrupt: InterruptFlag, stop_after: int | None = None) -> None:
        super().__init__()
        self.interrupt, self.stop_after = interrupt, stop_after

    def __call__(self, event: Any) -> None:
        super().__call__(event)
        if self.stop_after is not None and len(self.reports) >= self.stop_after:
            self.interrupt.set()

    @property
    def reports(self) -> list[tuple[int, int, Any]]:
        return [(e.value, e.max, e.preview) for e in self.of_type(NodeProgress)]


def node_context(
    *, folders: Any = None, manager: Any = None, stop_after: int | None = None, previews: bool = True
) -> tuple[ExecutionContext, RecordingSink]:
    """A context as the executor builds it, with the given services and a fresh sampling library."""
    interrupt = InterruptFlag()
    sink = RecordingSink(interrupt, stop_after)
    sink.wants_previews = previews
    services: dict[str, Any] = {SAMPLERS: sampling_library()}
    if folders is not None:
        services[FOLDERS] = folders
    if manager is not None:
        services[MODEL_MANAGER] = manager
    context = ExecutionContext(
        prompt_id="test", node_id="1", node_type="Test", sink=sink, interrupt=interrupt, services=services
    )
    return context, sink
