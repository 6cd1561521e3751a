"""The in-memory workflow: nodes with constant inputs and links, independent of the file format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Link:
    """An input fed by output `output_index` of node `node_id` (ComfyUI's `[node_id, index]`)."""

    node_id: str
    output_index: int

    def to_json(self) -> list[Any]:
        return [self.node_id, self.output_index]


@dataclass
class WorkflowNode:
    node_id: str
    node_type: str
    inputs: dict[str, Any] = field(default_factory=dict)  # constant value or Link
    title: str | None = None

    def links(self) -> dict[str, Link]:
        return {name: value for name, value in self.inputs.items() if isinstance(value, Link)}


@dataclass
class Workflow:
    """A graph of nodes keyed by id. `ui_document` keeps the UI-format original when there was one,
    so that saved images can embed it (PNG `workflow` chunk)."""

    nodes: dict[str, WorkflowNode] = field(default_factory=dict)
    ui_document: dict[str, Any] | None = None

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __getitem__(self, node_id: str) -> WorkflowNode:
        return self.nodes[node_id]

    def to_api(self) -> dict[str, Any]:
        """Export in ComfyUI's API format."""
        out: dict[str, Any] = {}
        for node_id, node in self.nodes.items():
            inputs = {k: (v.to_json() if isinstance(v, Link) else v) for k, v in node.inputs.items()}
            entry: dict[str, Any] = {"inputs": inputs, "class_type": node.node_type}
            if node.title:
                entry["_meta"] = {"title": node.title}
            out[node_id] = entry
        return out

    def set_input(self, node_id: str, input_name: str, value: Any) -> None:
        """Override one input (the CLI's --set). Raises KeyError naming the node if it does not exist."""
        if node_id not in self.nodes:
            raise KeyError(f"no node with id {node_id!r} (ids: {', '.join(sorted(self.nodes)[:20])})")
        self.nodes[node_id].inputs[input_name] = value
