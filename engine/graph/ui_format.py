"""ComfyUI's UI format (what the canvas saves) and its conversion to the API format.

ComfyUI can only do this conversion in its browser; we do it here so saved UI workflows run headless.
What the conversion has to know (facts of the UI format, version 0.4):

- `nodes[]`: `id`, `type`, `mode` (0 always, 2 muted/never, 4 bypassed), `inputs[]` (`name`, `type`,
  `link`, and `widget: {name}` when the slot belongs to a widget converted to an input), `outputs[]`
  (`type`, `links`), `widgets_values` (which value belongs to which input, in all the forms the canvas
  has saved: see `ui_widgets`).
- `links[]`: `[id, origin_id, origin_slot, target_id, target_slot, type]` (or objects with those names);
  old canvases leave `null` where a link was deleted, and the canvas skips those.
- UI-only nodes never reach the API: Reroute (pass-through), PrimitiveNode (its value is copied into the
  widgets it feeds), Note / MarkdownNote (comments). Muted nodes are dropped; bypassed nodes are dropped
  and each of their outputs is replaced by their input of the same type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import types as T
from engine.declarations import Input
from engine.errors import WorkflowFormatError
from engine.graph.ui_widgets import read_widget_values
from engine.graph.workflow import Link, Workflow, WorkflowNode
from engine.registry import NodeRegistry

MODE_MUTED = 2
MODE_BYPASSED = 4
UI_ONLY_NODE_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})


def looks_like_ui_format(document: Any) -> bool:
    return isinstance(document, dict) and isinstance(document.get("nodes"), list) and "links" in document


@dataclass(frozen=True, slots=True)
class _Constant:
    """A link that resolved to a fixed value (a PrimitiveNode's widget)."""

    value: Any


def _link_table(document: dict[str, Any]) -> dict[int, tuple[int, int, str]]:
    """link id -> (origin node id, origin slot, type)."""
    table: dict[int, tuple[int, int, str]] = {}
    for raw in document.get("links") or []:
        if raw is None:
            continue
        if isinstance(raw, list) and len(raw) >= 5:
            link_id, origin_id, origin_slot = raw[0], raw[1], raw[2]
            link_type = raw[5] if len(raw) > 5 else "*"
        elif isinstance(raw, dict):
            link_id, origin_id, origin_slot = raw.get("id"), raw.get("origin_id"), raw.get("origin_slot")
            link_type = raw.get("type", "*")
        else:
            raise WorkflowFormatError(f"malformed link entry {raw!r}")
        table[int(link_id)] = (int(origin_id), int(origin_slot), str(link_type))
    return table


class _Converter:
    def __init__(self, document: dict[str, Any], registry: NodeRegistry):
        self.registry = registry
        self.links = _link_table(document)
        self.nodes: dict[int, dict[str, Any]] = {}
        for raw in document["nodes"]:
            if not isinstance(raw, dict) or "id" not in raw or "type" not in raw:
                raise WorkflowFormatError(f"malformed node entry (needs 'id' and 'type'): {str(raw)[:200]}")
            self.nodes[int(raw["id"])] = raw
        subgraphs = (document.get("definitions") or {}).get("subgraphs") or []
        self.subgraph_ids = {s.get("id") for s in subgraphs if isinstance(s, dict)}

    def convert(self) -> Workflow:
        workflow = Workflow()
        for node_id, raw in self.nodes.items():
            node_type = raw["type"]
            if node_type in UI_ONLY_NODE_TYPES or raw.get("mode") in (MODE_MUTED, MODE_BYPASSED):
                continue
            if node_type in self.subgraph_ids or str(node_type).startswith("workflow>"):
                raise WorkflowFormatError(
                    f"node {node_id} is a group node / subgraph ({node_type!r}); these are not supported yet — "
                    "convert it back to regular nodes in the canvas and save again"
                )
            workflow.nodes[str(node_id)] = self._convert_node(node_id, raw)
        return workflow

    def _convert_node(self, node_id: int, raw: dict[str, Any]) -> WorkflowNode:
        node_type = raw["type"]
        inputs: dict[str, Any] = {}
        definition = self.registry.get(node_type)
        if definition is not None:
            specs = definition.current_inputs()
            inputs.update(read_widget_values(node_type, raw, specs, self.registry.choices_for))
        # Linked inputs (sockets, and widgets converted to inputs) override widget values.
        for slot in raw.get("inputs") or []:
            link_id = slot.get("link")
            name = slot.get("name")
            if isinstance(slot.get("widget"), dict):
                name = slot["widget"].get("name", name)
            if link_id is None or name is None:
                continue
            resolved = self._resolve(int(link_id))
            if isinstance(resolved, _Constant):
                inputs[name] = resolved.value
            elif isinstance(resolved, Link):
                inputs[name] = resolved
            elif definition is None or not _is_widget(definition.current_inputs(), name):
                # Fed by a muted node or a dangling reroute: the socket is simply unconnected
                # (a converted widget keeps its own value instead).
                inputs.pop(name, None)
        title = raw.get("title")
        return WorkflowNode(str(node_id), node_type, inputs, title if isinstance(title, str) else None)

    def _resolve(self, link_id: int, depth: int = 0) -> Link | _Constant | None:
        if depth > len(self.nodes) + 1:
            raise WorkflowFormatError(f"link {link_id} loops through reroutes/bypassed nodes forever")
        if link_id not in self.links:
            raise WorkflowFormatError(f"an input refers to link {link_id}, which is not in 'links'")
        origin_id, origin_slot, link_type = self.links[link_id]
        origin = self.nodes.get(origin_id)
        if origin is None:
            raise WorkflowFormatError(f"link {link_id} comes from node {origin_id}, which is not in 'nodes'")
        origin_type = origin["type"]
        if origin_type == "Reroute":
            return self._follow_input(origin, 0, depth)
        if origin_type == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            return _Constant(values[0]) if values else None
        if origin_type in UI_ONLY_NODE_TYPES or origin.get("mode") == MODE_MUTED:
            return None
        if origin.get("mode") == MODE_BYPASSED:
            return self._bypass(origin, origin_slot, link_type, depth)
        return Link(str(origin_id), origin_slot)

    def _follow_input(self, node: dict[str, Any], index: int, depth: int) -> Link | _Constant | None:
        slots = node.get("inputs") or []
        if index >= len(slots) or slots[index].get("link") is None:
            return None
        return self._resolve(int(slots[index]["link"]), depth + 1)

    def _bypass(self, node: dict[str, Any], slot: int, link_type: str, depth: int) -> Link | _Constant | None:
        """A bypassed node passes through the input whose type matches the requested output.

        Like ComfyUI: prefer the input at the same position if its type matches, else the first input
        of a matching type that is connected.
        """
        outputs = node.get("outputs") or []
        wanted = outputs[slot].get("type", link_type) if slot < len(outputs) else link_type
        slots = node.get("inputs") or []
        candidates = [slot] if slot < len(slots) else []
        candidates += [i for i in range(len(slots)) if i != slot]
        for index in candidates:
            entry = slots[index]
            if entry.get("link") is None:
                continue
            if T.types_compatible(str(entry.get("type", "*")), str(wanted)):
                return self._follow_input(node, index, depth)
        return None


def _is_widget(specs: tuple[Input, ...], name: str) -> bool:
    return any(s.name == name and s.is_widget for s in specs)


def convert_ui_workflow(document: dict[str, Any], registry: NodeRegistry) -> Workflow:
    """Convert a UI-format document to a Workflow using the registry's schemas for widget order."""
    if not looks_like_ui_format(document):
        raise WorkflowFormatError("not a UI-format workflow (expected 'nodes' and 'links')")
    workflow = _Converter(document, registry).convert()
    workflow.ui_document = document
    return workflow
