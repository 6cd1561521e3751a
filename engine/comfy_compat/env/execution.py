"""ComfyUI's `execution` module, as far as packs touch it at import time: they read (and some wrap)
`PromptExecutor` methods, and test for `ExecutionResult` / `DuplicateNodeError`. diffgraph's executor
(engine/execution) runs prompts; these classes exist so such imports and attribute reads succeed, and calling
them says plainly that they do not run prompts here."""

from __future__ import annotations

from enum import Enum
from typing import Any

from comfy_execution.graph import get_input_info
from comfy_execution.graph_utils import ExecutionBlocker, GraphBuilder, is_link

__all__ = [
    "DuplicateNodeError",
    "ExecutionBlocker",
    "ExecutionResult",
    "GraphBuilder",
    "PromptExecutor",
    "format_value",
    "get_input_info",
    "is_link",
]


class ExecutionResult(Enum):
    SUCCESS = 0
    FAILURE = 1
    PENDING = 2


class DuplicateNodeError(Exception):
    pass


def format_value(x: Any) -> Any:
    """How ComfyUI shows an input value in an error report."""
    if x is None or isinstance(x, int | float | bool | str):
        return x
    return str(x)


class PromptExecutor:
    """Not diffgraph's executor: prompts run through engine.execution. Packs that wrap these methods at import
    (e.g. handle_execution_error) load; nothing calls the wrapped methods."""

    def __init__(self, server: Any, cache_type: Any = False, cache_size: Any = None):
        self.server = server
        self.history_result: dict[str, Any] = {}
        self.status_messages: list[Any] = []
        self.success = True

    def reset(self) -> None:
        self.status_messages = []
        self.success = True

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        self.status_messages.append((event, data))

    def handle_execution_error(self, prompt_id: str, prompt: Any, current_outputs: Any, executed: Any,
                               error: Any, ex: Any) -> None:  # fmt: skip
        self.success = False
        self.add_message("execution_error", dict(error or {}, prompt_id=prompt_id), broadcast=False)

    def execute(
        self, prompt: Any, prompt_id: str, extra_data: Any = None, execute_outputs: Any = None
    ) -> None:
        raise NotImplementedError("diffgraph runs prompts with its own executor (engine.execution.executor)")
