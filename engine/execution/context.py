"""What a running node can reach: progress reporting, interrupt checks, folders and shared services."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from engine.errors import ExecutionInterrupted
from engine.execution.events import EventSink, NodeProgress


class InterruptFlag:
    """Cooperative interrupt: set from any thread, checked between nodes and at every progress report."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise ExecutionInterrupted("execution was interrupted")


class ExecutionContext:
    """Passed to node functions that declare a `context` parameter.

    `services` holds runtime objects the app provides (folders, model manager, ...) by name, so nodes
    never reach for module globals.
    """

    def __init__(
        self,
        *,
        prompt_id: str,
        node_id: str,
        node_type: str,
        sink: EventSink,
        interrupt: InterruptFlag,
        services: Mapping[str, Any],
    ):
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self._sink = sink
        self._interrupt = interrupt
        self.services = services

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report progress (e.g. sampling step value of total); raises ExecutionInterrupted if asked to stop."""
        self._interrupt.raise_if_set()
        self._sink(NodeProgress(self.prompt_id, self.node_id, int(value), int(total), preview))

    def check_interrupt(self) -> None:
        self._interrupt.raise_if_set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def service(self, name: str) -> Any:
        try:
            return self.services[name]
        except KeyError:
            raise RuntimeError(
                f"node {self.node_id} ({self.node_type}) needs the {name!r} service, which this runtime does not provide"
            ) from None

    @property
    def folders(self) -> Any:
        return self.service("folders")
