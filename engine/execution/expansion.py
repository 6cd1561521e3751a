"""Node expansion and execution blockers: the parts of ComfyUI's dynamic execution the executor honours.

* Expansion: a node may return `{"result": (...), "expand": graph}` (or a V3 `NodeOutput(expand=...)`,
  which the V3 adapter turns into that dict). `graph` is API-format `{id: {"class_type", "inputs"}}` (what
  `GraphBuilder.finalize()` gives), its links `[node_id, index]`; the values of `result` may be such links
  into the new graph. The executor adds the new nodes to the running workflow under the ids they carry
  (GraphBuilder prefixes them with the expanding node's id and call index, as in ComfyUI; a clash with an
  existing id is an error, as there), runs what the result links to and every output node among them, and
  then gives the expanding node the linked outputs as its own.
* ExecutionBlocker: a value that, reaching a node's input, stops that node; its outputs become blockers in
  turn, so everything downstream is skipped, output nodes included. A blocker with a message reports it
  once, at the first node it stops ("Execution Blocked: <message>"), and travels on silently.

The ComfyUI environment (env/comfy_execution/graph_utils.py) re-exports ExecutionBlocker from here, so a
pack's blocker is the very class the executor tests for.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from engine.declarations import NodeDefinition
from engine.graph.validate import ANY_INPUT_ALL, PreparedNode, undeclared_inputs_taken
from engine.graph.workflow import Link
from engine.registry import NodeRegistry

EXPAND = "expand"
# The hidden input kind that receives the run's DynamicPrompt.
HIDDEN_DYNPROMPT = "DYNPROMPT"


class ExecutionBlocker:
    """Return it as an output value to stop every node that receives it. `message=None` blocks silently;
    a message is reported as an error of the first node blocked ("Execution Blocked: <message>")."""

    __slots__ = ("message",)

    def __init__(self, message: str | None):
        self.message = message

    def __repr__(self) -> str:
        return f"ExecutionBlocker({self.message!r})"


def blocked_message(message: str) -> str:
    """The error text ComfyUI reports for a blocker with a message."""
    return f"Execution Blocked: {message}"


BLOCKED_EXCEPTION_TYPE = "ExecutionBlocked"

# The index of the call being made for the running node (a node mapped over list inputs is called once per
# element). GraphBuilder derives its default id prefix from it and the node id, as ComfyUI's executor sets
# that prefix before each call.
_CALL_INDEX: ContextVar[int] = ContextVar("diffgraph_call_index", default=0)


def call_index() -> int:
    """The call index of the running node (0 outside a node, and for nodes called once)."""
    return _CALL_INDEX.get()


def set_call_index(index: int) -> None:
    # Not reset after each call on purpose: the executor sets it before every call but the first of a
    # node and back to 0 after a node called several times, so single calls (nearly all) cost nothing.
    _CALL_INDEX.set(index)


def is_link(value: Any) -> bool:
    """ComfyUI's test for a link in an expansion graph or result: `[node_id: str, index: int | float]`."""
    return (
        type(value) is list
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
        and not isinstance(value[1], bool)
    )


def expansion_of(result: Any) -> tuple[dict[str, Any], Any, Any] | None:
    """(graph, result values, ui) if a node's return value asks for an expansion, else None."""
    if not (isinstance(result, dict) and EXPAND in result):
        return None
    graph = result[EXPAND]
    if not isinstance(graph, dict):
        raise TypeError(
            f"'expand' must be a dict of nodes ({{id: {{'class_type', 'inputs'}}}}), got {graph!r}"
        )
    return graph, result.get("result"), result.get("ui")


@dataclass
class PendingExpansion:
    """An expanding node waiting for its subgraph: per call, (graph or None, the call's result values)."""

    calls: list[tuple[dict[str, Any] | None, Any]]
    ui: dict[str, Any] | None
    waits_for: list[str] = field(default_factory=list)


class ExpansionError(ValueError):
    """An expansion graph the executor cannot add (unknown type, duplicate id, dangling link)."""


def prepare_expansion(
    graph: Mapping[str, Any], registry: NodeRegistry, existing: Mapping[str, PreparedNode]
) -> tuple[dict[str, PreparedNode], list[str]]:
    """The graph's nodes as PreparedNodes, and their ids sources first. Constants are passed as given (as
    ComfyUI does: expanded nodes are not validated and may receive any Python value, a model included)."""
    prepared: dict[str, PreparedNode] = {}
    for raw_id, info in graph.items():
        node_id = str(raw_id)
        if node_id in existing or node_id in prepared:
            raise ExpansionError(
                f"Attempt to add duplicate node {node_id}. Ensure node ids are unique and deterministic "
                "or use graph_utils.GraphBuilder."
            )
        if not isinstance(info, Mapping) or not isinstance(info.get("class_type"), str):
            raise ExpansionError(f"expanded node {node_id} has no 'class_type'")
        definition = registry.get(info["class_type"])
        if definition is None:
            raise ExpansionError(f"expanded node {node_id}: node type {info['class_type']!r} is not known")
        prepared[node_id] = _prepare_node(node_id, definition, dict(info.get("inputs") or {}))
    for node in prepared.values():
        for name, link in node.links.items():
            if link.node_id not in prepared and link.node_id not in existing:
                raise ExpansionError(
                    f"expanded node {node.node_id}: input {name!r} links to node {link.node_id!r}, which does "
                    "not exist"
                )
    return prepared, _order(prepared)


def _prepare_node(node_id: str, definition: NodeDefinition, inputs: dict[str, Any]) -> PreparedNode:
    specs = definition.current_inputs()
    declared = {spec.name for spec in specs}
    names = set(declared)
    taken = undeclared_inputs_taken(definition)
    if taken is not None:
        names |= set(inputs) - set(definition.hidden)
    constants: dict[str, Any] = {}
    links: dict[str, Link] = {}
    for name in names:
        if name not in inputs:
            continue
        value = inputs[name]
        if is_link(value):
            links[name] = Link(value[0], int(value[1]))
        elif name in declared or taken == ANY_INPUT_ALL:  # an undeclared constant only for "all"
            constants[name] = value
    lazy = frozenset(spec.name for spec in specs if spec.lazy)
    return PreparedNode(node_id, definition.node_type, definition, constants, links, lazy)


def _order(prepared: Mapping[str, PreparedNode]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the path, 2 = placed
    for root in prepared:
        stack = [(root, iter(prepared[root].links.values()))]
        if root in state:
            continue
        state[root] = 1
        while stack:
            node_id, links = stack[-1]
            link = next(links, None)
            if link is None:
                state[node_id] = 2
                order.append(node_id)
                stack.pop()
            elif link.node_id in prepared:
                mark = state.get(link.node_id)
                if mark == 1:
                    raise ExpansionError(f"the expansion graph has a dependency cycle through {link.node_id}")
                if mark is None:
                    state[link.node_id] = 1
                    stack.append((link.node_id, iter(prepared[link.node_id].links.values())))
    return order


_PLAIN = (str, int, float, bool, type(None))


def plain_constants(constants: Mapping[str, Any]) -> bool:
    """Whether every constant is JSON-like, so that its repr identifies it (a tensor's repr does not: an
    expanded node given one is keyed to this run only, like ComfyUI's unhashable inputs)."""
    return all(_plain(value, 0) for value in constants.values())


def _plain(value: Any, depth: int) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if depth > 6:
        return False
    if isinstance(value, list | tuple):
        return all(_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


class NodeNotFoundError(KeyError):
    """DynamicPrompt.get_node for an id that is in neither the prompt nor an expansion."""


class DynamicPrompt:
    """The run's prompt as nodes see it through the DYNPROMPT hidden input (ComfyUI's class of that name):
    the API-format prompt as submitted plus the nodes expansions added, each with the node that added it."""

    def __init__(self, original_prompt: dict[str, Any]):
        self.original_prompt = original_prompt
        self.ephemeral_prompt: dict[str, Any] = {}
        self.ephemeral_parents: dict[str, str] = {}
        self.ephemeral_display: dict[str, str] = {}

    def get_node(self, node_id: str) -> Any:
        if node_id in self.ephemeral_prompt:
            return self.ephemeral_prompt[node_id]
        if node_id in self.original_prompt:
            return self.original_prompt[node_id]
        raise NodeNotFoundError(f"Node {node_id} not found")

    def has_node(self, node_id: str) -> bool:
        return node_id in self.original_prompt or node_id in self.ephemeral_prompt

    def add_ephemeral_node(self, node_id: str, node_info: Any, parent_id: str, display_id: str) -> None:
        self.ephemeral_prompt[node_id] = node_info
        self.ephemeral_parents[node_id] = parent_id
        self.ephemeral_display[node_id] = display_id

    def get_real_node_id(self, node_id: str) -> str:
        """The prompt's node an expanded node descends from (itself for a prompt node)."""
        while node_id in self.ephemeral_parents:
            node_id = self.ephemeral_parents[node_id]
        return node_id

    def get_parent_node_id(self, node_id: str) -> str | None:
        return self.ephemeral_parents.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        while node_id in self.ephemeral_display:
            node_id = self.ephemeral_display[node_id]
        return node_id

    def all_node_ids(self) -> set[str]:
        return set(self.original_prompt) | set(self.ephemeral_prompt)

    def get_original_prompt(self) -> dict[str, Any]:
        return self.original_prompt
