"""ComfyUI's `comfy_execution.graph`: the names packs import from it (ExecutionBlocker, DynamicPrompt,
get_input_info and the error classes). Execution itself is diffgraph's executor."""

from __future__ import annotations

from typing import Any

from engine.execution.expansion import DynamicPrompt, ExecutionBlocker, NodeNotFoundError

__all__ = [
    "DependencyCycleError",
    "DynamicPrompt",
    "ExecutionBlocker",
    "NodeInputError",
    "NodeNotFoundError",
    "get_input_info",
]


class DependencyCycleError(Exception):
    pass


class NodeInputError(Exception):
    pass


def get_input_info(
    class_def: Any, input_name: str, valid_inputs: dict[str, Any] | None = None
) -> tuple[Any, str | None, Any]:
    """(type, "required" | "optional" | "hidden", options) of an input of a node class; (None, None, None)
    if it has no such input. Looked up in that section order, as ComfyUI does."""
    valid_inputs = valid_inputs or class_def.INPUT_TYPES()
    for category in ("required", "optional", "hidden"):
        section = valid_inputs.get(category) or {}
        if input_name in section:
            info = section[input_name]
            if isinstance(info, str):
                return info, category, {}
            return info[0], category, (info[1] if len(info) > 1 else {})
    return None, None, None
