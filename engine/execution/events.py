"""Events the executor sends to a sink (CLI progress bar, WebSocket, tests) instead of printing.

A sink is any callable taking one event. Field names follow ComfyUI's WebSocket messages so the server
can forward them with little translation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExecutionStarted:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionCached:
    prompt_id: str
    nodes: list[str]


@dataclass(frozen=True)
class NodeExecuting:
    prompt_id: str
    node_id: str
    node_type: str


@dataclass(frozen=True)
class NodeProgress:
    prompt_id: str
    node_id: str
    value: int
    max: int
    preview: Any = None  # e.g. a PIL image or tensor for live previews


@dataclass(frozen=True)
class NodeExecuted:
    prompt_id: str
    node_id: str
    node_type: str
    output: dict[str, Any]  # the node's UI data, e.g. {"images": [...]}
    cached: bool = False


@dataclass(frozen=True)
class ExecutionFailed:
    prompt_id: str
    node_id: str
    node_type: str
    exception_message: str
    exception_type: str
    traceback: list[str]
    current_inputs: dict[str, Any] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExecutionInterruptedEvent:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    executed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExecutionFinished:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)


Event = (
    ExecutionStarted
    | ExecutionCached
    | NodeExecuting
    | NodeProgress
    | NodeExecuted
    | ExecutionFailed
    | ExecutionInterruptedEvent
    | ExecutionFinished
)
# A sink may set `wants_previews = True` to receive rendered sampler previews in NodeProgress events;
# without it the executor's contexts never render them (ExecutionContext.progress).
EventSink = Callable[[Any], None]


def discard(_event: Any) -> None:
    """The default sink."""
