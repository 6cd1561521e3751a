"""ComfyUI's API format: `{"<id>": {"class_type": ..., "inputs": {name: value | [node_id, index]}}}`."""

from __future__ import annotations

from typing import Any

from engine.errors import WorkflowFormatError
from engine.graph.workflow import Link, Workflow, WorkflowNode


def is_link(value: Any) -> bool:
    """A link is a two-element list `[node_id, output_index]`, exactly as ComfyUI reads it."""
    # Exact type checks on purpose: bool is an int subclass and must not count as an index; this
    # runs for every input of every node, so it is kept cheap.
    if type(value) is not list and type(value) is not tuple:
        return False
    return len(value) == 2 and type(value[1]) is int and type(value[0]) in (str, int)


def parse_api_workflow(document: Any) -> Workflow:
    if not isinstance(document, dict):
        raise WorkflowFormatError(
            f"an API-format workflow is a JSON object of nodes, got {type(document).__name__}"
        )
    workflow = Workflow()
    for raw_id, entry in document.items():
        node_id = str(raw_id)
        if not isinstance(entry, dict):
            raise WorkflowFormatError(f"node {node_id}: expected an object with class_type and inputs")
        node_type = entry.get("class_type")
        if not isinstance(node_type, str) or not node_type:
            raise WorkflowFormatError(f"node {node_id}: missing 'class_type'")
        raw_inputs = entry.get("inputs", {})
        if not isinstance(raw_inputs, dict):
            raise WorkflowFormatError(f"node {node_id} ({node_type}): 'inputs' must be an object")
        inputs = {
            name: Link(str(value[0]), int(value[1])) if is_link(value) else value
            for name, value in raw_inputs.items()
        }
        meta = entry.get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        workflow.nodes[node_id] = WorkflowNode(node_id, node_type, inputs, title)
    return workflow


def looks_like_api_format(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and bool(document)
        and all(isinstance(v, dict) and "class_type" in v for v in document.values())
    )
