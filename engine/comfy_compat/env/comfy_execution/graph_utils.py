"""ComfyUI's `comfy_execution.graph_utils`: GraphBuilder for node expansion, `is_link`, ExecutionBlocker.

A node builds a subgraph with GraphBuilder and returns `{"result": (...), "expand": graph.finalize()}`;
the executor (engine/execution/expansion.py) runs it. Node ids get the prefix
"<expanding node id>.<call index>.<graph index>." by default, as in ComfyUI, so they are unique in the
run and the same on every run.
"""

from __future__ import annotations

from typing import Any

from engine.execution.context import running_context
from engine.execution.expansion import ExecutionBlocker, call_index
from engine.execution.expansion import is_link as _engine_is_link

__all__ = ["ExecutionBlocker", "GraphBuilder", "Node", "add_graph_prefix", "is_link"]


def is_link(obj: Any) -> bool:
    """A `[node_id: str, output_index: int]` list."""
    return _engine_is_link(obj)


class GraphBuilder:
    _default_prefix_root = ""
    _default_prefix_call_index = 0
    _default_prefix_graph_index = 0
    # The (prompt, node, call) the defaults above were derived for: a new call starts counting graphs at 0.
    _default_prefix_owner: tuple[str, str, int] | None = None

    def __init__(self, prefix: str | None = None):
        self.prefix = GraphBuilder.alloc_prefix() if prefix is None else prefix
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    @classmethod
    def set_default_prefix(cls, prefix_root: str, call_index: int, graph_index: int = 0) -> None:
        cls._default_prefix_root = prefix_root
        cls._default_prefix_call_index = call_index
        cls._default_prefix_graph_index = graph_index

    @classmethod
    def alloc_prefix(
        cls, root: str | None = None, call_index: int | None = None, graph_index: int | None = None
    ) -> str:
        _follow_running_node()
        root = GraphBuilder._default_prefix_root if root is None else root
        if call_index is None:
            call_index = GraphBuilder._default_prefix_call_index
        if graph_index is None:
            graph_index = GraphBuilder._default_prefix_graph_index
        GraphBuilder._default_prefix_graph_index += 1
        return f"{root}.{call_index}.{graph_index}."

    def node(self, class_type: str, id: str | None = None, **kwargs: Any) -> Node:
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        id = self.prefix + id
        if id not in self.nodes:
            self.nodes[id] = Node(id, class_type, kwargs)
        return self.nodes[id]

    def lookup_node(self, id: str) -> Node | None:
        return self.nodes.get(self.prefix + id)

    def finalize(self) -> dict[str, dict[str, Any]]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Every input linked to output `index` of `node_id` gets `new_value` (None: the input is removed)."""
        node_id = self.prefix + node_id
        for node in self.nodes.values():
            for key, value in list(node.inputs.items()):
                if is_link(value) and value[0] == node_id and value[1] == index:
                    if new_value is None:
                        del node.inputs[key]
                    else:
                        node.inputs[key] = new_value

    def remove_node(self, id: str) -> None:
        del self.nodes[self.prefix + id]


def _follow_running_node() -> None:
    """Inside a node, the default prefix is that node's id and call index (ComfyUI's executor sets it
    before each call; here GraphBuilder reads it from the running node)."""
    context = running_context()
    if context is None:
        return
    owner = (context.prompt_id, context.node_id, call_index())
    if owner != GraphBuilder._default_prefix_owner:
        GraphBuilder._default_prefix_owner = owner
        GraphBuilder.set_default_prefix(context.node_id, owner[2], 0)


class Node:
    def __init__(self, id: str, class_type: str, inputs: dict[str, Any]):
        self.id = id
        self.class_type = class_type
        self.inputs = inputs
        self.override_display_id: str | None = None

    def out(self, index: int) -> list[Any]:
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        self.override_display_id = override_display_id

    def serialize(self) -> dict[str, Any]:
        serialized: dict[str, Any] = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            serialized["override_display_id"] = self.override_display_id
        return serialized


def add_graph_prefix(
    graph: dict[str, Any], outputs: Any, prefix: str
) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The graph with `prefix` before every node id and internal link, and the outputs' links renamed."""

    def renamed(value: Any) -> Any:
        return [prefix + value[0], value[1]] if is_link(value) else value

    new_graph = {
        prefix + node_id: {
            "class_type": info["class_type"],
            "inputs": {name: renamed(value) for name, value in info.get("inputs", {}).items()},
        }
        for node_id, info in graph.items()
    }
    return new_graph, tuple(renamed(output) for output in outputs)
