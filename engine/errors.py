"""One exception hierarchy for the engine, and structured validation records.

Validation never stops at the first problem: it collects `ValidationIssue` records (what, where, how to
fix it) and raises them together in a `WorkflowValidationError`. The issue codes are ComfyUI's where it
has one, so API clients that switch on them keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DiffgraphError(Exception):
    """Base class of every error the engine raises on purpose."""


class NodeDefinitionError(DiffgraphError):
    """A node declaration is malformed; raised when it is registered, naming the node."""

    def __init__(self, node_type: str, message: str):
        self.node_type = node_type
        super().__init__(f"Node definition {node_type!r}: {message}")


class WorkflowFormatError(DiffgraphError):
    """The workflow document itself cannot be read (not JSON, wrong shape, unknown format)."""


# ComfyUI's error type names, reused so that clients switching on them keep working.
MISSING_NODE_TYPE = "missing_node_type"
REQUIRED_INPUT_MISSING = "required_input_missing"
BAD_LINKED_INPUT = "bad_linked_input"
RETURN_TYPE_MISMATCH = "return_type_mismatch"
INVALID_INPUT_TYPE = "invalid_input_type"
VALUE_SMALLER_THAN_MIN = "value_smaller_than_min"
VALUE_BIGGER_THAN_MAX = "value_bigger_than_max"
VALUE_NOT_IN_LIST = "value_not_in_list"
CUSTOM_VALIDATION_FAILED = "custom_validation_failed"
EXCEPTION_DURING_VALIDATION = "exception_during_validation"
DEPENDENCY_CYCLE = "dependency_cycle"
PROMPT_NO_OUTPUTS = "prompt_no_outputs"
INVALID_TARGET = "invalid_target"


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in a workflow. `node_id` is None for whole-workflow problems."""

    code: str
    message: str
    node_id: str | None = None
    node_type: str | None = None
    input_name: str | None = None
    details: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def where(self, *, with_input: bool = True) -> str:
        parts = []
        if self.node_id is not None:
            parts.append(f"node {self.node_id}" + (f" ({self.node_type})" if self.node_type else ""))
        if self.input_name and with_input:
            parts.append(f"input {self.input_name!r}")
        return ", ".join(parts) or "workflow"

    def __str__(self) -> str:
        # Most messages already start by naming their input; do not say it twice.
        names_input = self.input_name is not None and self.message.startswith(f"input {self.input_name!r}")
        text = f"{self.where(with_input=not names_input)}: {self.message}"
        return f"{text} [{self.details}]" if self.details else text

    def to_comfy(self) -> dict[str, Any]:
        """ComfyUI's per-error shape: {"type", "message", "details", "extra_info"}."""
        extra = dict(self.extra)
        if self.input_name is not None:
            extra.setdefault("input_name", self.input_name)
        return {"type": self.code, "message": self.message, "details": self.details, "extra_info": extra}


class WorkflowValidationError(DiffgraphError):
    """The workflow has problems; `issues` lists every one of them."""

    def __init__(self, issues: list[ValidationIssue]):
        self.issues = list(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"Workflow is not valid ({len(self.issues)} problem(s)):\n{lines}")

    def node_errors(self) -> dict[str, dict[str, Any]]:
        """ComfyUI's `node_errors` mapping: node id -> {"errors": [...], "class_type", "dependent_outputs"}."""
        result: dict[str, dict[str, Any]] = {}
        for issue in self.issues:
            if issue.node_id is None:
                continue
            entry = result.setdefault(
                issue.node_id,
                {"errors": [], "dependent_outputs": [], "class_type": issue.node_type},
            )
            entry["errors"].append(issue.to_comfy())
        return result

    def prompt_error(self) -> dict[str, Any]:
        """ComfyUI's top-level `error` object for a rejected prompt.

        An unknown node type comes first, in ComfyUI's words and type (`invalid_prompt`): frontends
        show this message, and it is the problem to fix before any other (the missing node may be the
        output node). Our `node_errors` still list every problem."""
        missing = [i for i in self.issues if i.code == MISSING_NODE_TYPE]
        if missing:
            return {
                "type": "invalid_prompt",
                "message": f"Cannot execute because node {missing[0].node_type} does not exist.",
                "details": f"Node ID '#{missing[0].node_id}'",
                "extra_info": {},
            }
        general = [i for i in self.issues if i.node_id is None]
        first = general[0] if general else None
        if first is not None:
            return {"type": first.code, "message": first.message, "details": first.details, "extra_info": {}}
        return {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "; ".join(str(i) for i in self.issues[:5]),
            "extra_info": {},
        }


class ExecutionInterrupted(DiffgraphError):
    """Raised inside execution when the user interrupts; nodes may let it propagate."""


class NodeExecutionError(DiffgraphError):
    """A node raised while executing. Carries what the UI needs to point at the culprit."""

    def __init__(
        self,
        node_id: str,
        node_type: str,
        cause: BaseException,
        traceback_text: str,
        current_inputs: dict[str, Any] | None = None,
    ):
        self.node_id = node_id
        self.node_type = node_type
        self.cause = cause
        self.traceback_text = traceback_text
        self.current_inputs = current_inputs or {}
        super().__init__(f"Node {node_id} ({node_type}) failed: {type(cause).__name__}: {cause}")


class UnsafePathError(DiffgraphError):
    """A file name points outside the folders it is allowed to use."""
