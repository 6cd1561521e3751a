"""Events the executor sends to a sink (CLI progress bar, WebSocket, tests) instead of printing.

A sink is any callable taking one event. Field names follow ComfyUI's WebSocket messages so the server
can forward them with little translation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict


@dataclass(frozen=True)
class ExecutionStarted:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionCached:
    prompt_id: str
    nodes: list[str]


@dataclass(frozen=True)
class NodeExecuting:
    """A node starts. For a node added by node expansion, `display_node` is the node the canvas shows
    it as (the expanding node of the original prompt, or an "override_display_id"), `parent_node` the
    node whose expansion added it and `real_node` the original prompt's node at the root of the chain;
    all None for the prompt's own nodes (each is its own display and real node), as in ComfyUI."""

    prompt_id: str
    node_id: str
    node_type: str
    display_node: str | None = None
    parent_node: str | None = None
    real_node: str | None = None


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
    display_node: str | None = None  # as in NodeExecuting
    parent_node: str | None = None
    real_node: str | None = None


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


class Lineage(TypedDict, total=False):
    """The expansion fields of NodeExecuting / NodeExecuted (keyword arguments for them)."""

    display_node: str
    parent_node: str
    real_node: str


def expansion_lineage(expanded_from: Mapping[str, tuple[str, Mapping[str, Any]]], node_id: str) -> Lineage:
    """The `display_node` / `parent_node` / `real_node` fields of a node's events, from the executor's
    record of expansions (added node -> (expanding node, the added node's prompt entry)); empty for a
    node of the original prompt. The display node follows "override_display_id" or the parent, then
    that node's own display node, up to a node nobody added (ComfyUI's DynamicPrompt.get_display_node_id)."""
    if node_id not in expanded_from:
        return {}
    parent = expanded_from[node_id][0]
    real, seen = node_id, {node_id}
    while real in expanded_from and expanded_from[real][0] not in seen:
        real = expanded_from[real][0]
        seen.add(real)
    display, seen = node_id, {node_id}
    while display in expanded_from:
        parent_of, info = expanded_from[display]
        nxt = str(info.get("override_display_id", parent_of))
        if nxt in seen:  # an entry naming itself (or a loop) as its display: stop there
            break
        display = nxt
        seen.add(nxt)
    return {"display_node": display, "parent_node": parent, "real_node": real}


# A sink may set `wants_previews = True` to receive rendered sampler previews in NodeProgress events;
# without it the executor's contexts never render them (ExecutionContext.progress).
EventSink = Callable[[Any], None]


def discard(_event: Any) -> None:
    """The default sink."""
