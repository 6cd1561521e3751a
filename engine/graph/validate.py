"""Validation: find every problem in a workflow at once, per node and per input.

The result of a successful validation is a `ValidatedWorkflow`: the nodes the targets need, in
dependency order, with their constant inputs already converted to the declared types. The executor
works from that and never re-checks.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from engine import errors as E
from engine import types as T
from engine.declarations import FileChoices, Input, NodeDefinition
from engine.errors import ValidationIssue, WorkflowValidationError
from engine.folders import DATA_KINDS, split_annotated
from engine.graph.workflow import Link, Workflow
from engine.registry import NodeRegistry

# Set on a node function whose node takes inputs it does not declare (see engine/plugins/classic.py; the
# graph layer may not import the plugins layer, so the name is repeated here). The value says which:
# ANY_INPUT_ALL (or True) for every input of the prompt, linked or set (a classic "optional" dict that
# claims every name); ANY_INPUT_LINKED for linked ones only: ComfyUI hands a pack node every linked input
# of the prompt whatever INPUT_TYPES says (its frontend adds such sockets dynamically, for **kwargs), but
# a constant only when declared. Built-in nodes set nothing and stay strict.
ACCEPTS_ANY_INPUT = "accepts_any_input"
ANY_INPUT_ALL = "all"
ANY_INPUT_LINKED = "linked"


def undeclared_inputs_taken(definition: NodeDefinition) -> str | None:
    """ANY_INPUT_ALL, ANY_INPUT_LINKED or None: which undeclared inputs the node receives."""
    value = getattr(definition.function, ACCEPTS_ANY_INPUT, None)
    if value is True or value == ANY_INPUT_ALL:
        return ANY_INPUT_ALL
    return ANY_INPUT_LINKED if value == ANY_INPUT_LINKED else None


@dataclass(slots=True)
class PreparedNode:
    node_id: str
    node_type: str
    definition: NodeDefinition
    constants: dict[str, Any]  # converted widget values
    links: dict[str, Link]
    lazy_inputs: frozenset[str] = frozenset()


@dataclass
class ValidatedWorkflow:
    workflow: Workflow
    targets: list[str]
    order: list[str]  # every needed node, dependencies first
    nodes: dict[str, PreparedNode] = field(default_factory=dict)
    # The executor's per-node static cache-key parts, kept here so re-running the same validated
    # workflow does not recompute them.
    key_parts: dict[str, Any] = field(default_factory=dict)
    # Set when validation was partial and some requested outputs failed: their problems, and those in
    # ComfyUI's `node_errors` shape (each with the outputs it cost in "dependent_outputs"). ComfyUI answers
    # them with the prompt id and runs only the valid outputs, which `targets` then lists.
    rejected: WorkflowValidationError | None = None
    node_errors: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rejected_targets(self) -> list[str]:
        """The requested output nodes left out by a partial validation."""
        found = {target for entry in self.node_errors.values() for target in entry["dependent_outputs"]}
        return sorted(found, key=_id_sort_key)


class _Validator:
    def __init__(self, workflow: Workflow, registry: NodeRegistry):
        self.workflow = workflow
        self.registry = registry
        self.issues: list[ValidationIssue] = []
        # Source node ids per node, computed once (used by the reachability and ordering passes).
        self.sources = {
            node_id: [link.node_id for link in node.links().values() if link.node_id in workflow.nodes]
            for node_id, node in workflow.nodes.items()
        }

    def issue(
        self, code: str, message: str, node_id: str | None = None, input_name: str | None = None, **kw: Any
    ):
        node_type = self.workflow.nodes[node_id].node_type if node_id in self.workflow.nodes else None
        self.issues.append(ValidationIssue(code, message, node_id, node_type, input_name, **kw))

    def run(self, targets: Iterable[str] | None, partial: bool = False) -> ValidatedWorkflow:
        self._report_unknown_types()
        target_list = self._targets(targets)
        needed = self._needed(target_list)
        order = self._order(needed)
        prepared: dict[str, PreparedNode] = {}
        for node_id in order or sorted(needed):
            node = self._check_node(node_id)
            if node is not None:
                prepared[node_id] = node
        if not self.issues:
            return ValidatedWorkflow(self.workflow, target_list, order, prepared)
        if partial and order:
            kept = self._valid_part(target_list, order, prepared)
            if kept is not None:
                return kept
        raise WorkflowValidationError(self.issues)

    def _valid_part(
        self, targets: list[str], order: list[str], prepared: dict[str, PreparedNode]
    ) -> ValidatedWorkflow | None:
        """The workflow cut down to the outputs whose nodes all validated, as ComfyUI runs a prompt whose
        other outputs failed; None when none did, or when a problem is not a node's own (an unknown node
        type, a bad target: ComfyUI refuses the whole prompt for those)."""
        if any(i.node_id is None or i.code == E.MISSING_NODE_TYPE for i in self.issues):
            return None
        bad = {issue.node_id for issue in self.issues}
        good: list[str] = []
        rejected = WorkflowValidationError(self.issues)
        node_errors = rejected.node_errors()
        for target in targets:
            needed = self._needed([target])
            if needed.isdisjoint(bad):
                good.append(target)
                continue
            for node_id in sorted(needed & bad, key=_id_sort_key):
                node_errors[node_id]["dependent_outputs"].append(target)
        if not good:
            return None
        needed = self._needed(good)
        return ValidatedWorkflow(
            self.workflow,
            good,
            [node_id for node_id in order if node_id in needed],
            {node_id: node for node_id, node in prepared.items() if node_id in needed},
            rejected=rejected,
            node_errors=node_errors,
        )

    # -- graph level ----------------------------------------------------------------------------

    def _report_unknown_types(self) -> None:
        """Every node of an unknown type, needed or not (as ComfyUI): any of them may be an output node,
        so leaving one out would silently drop an output, and without them no output may be found."""
        for node_id in sorted(self.workflow.nodes, key=_id_sort_key):
            node_type = self.workflow.nodes[node_id].node_type
            if self.registry.get(node_type) is None:
                self.issue(
                    E.MISSING_NODE_TYPE,
                    f"node type {node_type!r} is not known",
                    node_id,
                    details="install the plugin that provides it into custom_nodes/ "
                    "(or check its import error)",
                )

    def _targets(self, targets: Iterable[str] | None) -> list[str]:
        if targets is not None:
            result = []
            for target in targets:
                target = str(target)
                if target not in self.workflow.nodes:
                    self.issue(E.INVALID_TARGET, f"requested output node {target!r} is not in the workflow")
                else:
                    result.append(target)
            return result
        result = []
        for node_id, node in self.workflow.nodes.items():
            definition = self.registry.get(node.node_type)
            if definition is not None and definition.output_node:
                result.append(node_id)
        if not result:
            unknown = any(self.registry.get(n.node_type) is None for n in self.workflow.nodes.values())
            self.issue(
                E.PROMPT_NO_OUTPUTS,
                "the workflow has no output node, so nothing would run",
                details="add an output node such as SaveImage or PreviewImage"
                + (" (or install the unknown node types: one of them may be the output)" if unknown else ""),
            )
        return result

    def _needed(self, targets: list[str]) -> set[str]:
        needed: set[str] = set()
        stack = list(targets)
        while stack:
            node_id = stack.pop()
            if node_id in needed:
                continue
            needed.add(node_id)
            stack.extend(self.sources[node_id])
        return needed

    def _order(self, needed: set[str]) -> list[str]:
        """Depth-first topological order; reports every node on every cycle (an edge that closes a cycle is
        reported and then left out, so the search goes on and finds the other cycles too)."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        sources = self.sources
        cyclic = False
        for root in sorted(needed, key=_id_sort_key):
            if root in state:
                continue
            stack: list[tuple[str, list[str]]] = [(root, list(sources[root]))]
            state[root] = 1
            while stack:
                node_id, pending = stack[-1]
                if pending:
                    source = pending.pop()
                    mark = state.get(source)
                    if mark is None:
                        state[source] = 1
                        stack.append((source, list(sources[source])))
                    elif mark == 1:
                        cycle = [entry[0] for entry in stack[[e[0] for e in stack].index(source) :]]
                        self._report_cycle(cycle)
                        cyclic = True
                else:
                    state[node_id] = 2
                    order.append(node_id)
                    stack.pop()
        return [] if cyclic else order

    def _report_cycle(self, cycle: list[str]) -> None:
        path = " -> ".join(cycle + [cycle[0]])
        for node_id in cycle:
            self.issue(
                E.DEPENDENCY_CYCLE,
                f"node is part of a dependency cycle: {path}",
                node_id,
                details="remove one of the links in the cycle",
            )

    # -- node level ----------------------------------------------------------------------------

    def _check_node(self, node_id: str) -> PreparedNode | None:
        node = self.workflow.nodes[node_id]
        definition = self.registry.get(node.node_type)
        if definition is None:
            return None  # reported by _report_unknown_types
        constants: dict[str, Any] = {}
        links: dict[str, Link] = {}
        specs = definition.current_inputs()
        before = len(self.issues)
        for spec in specs:
            value = node.inputs.get(spec.name, _MISSING)
            if value is _MISSING:
                if not spec.optional:
                    self.issue(
                        E.REQUIRED_INPUT_MISSING,
                        f"required input {spec.name!r} ({spec.type}) is missing",
                        node_id,
                        spec.name,
                        details="connect a node to it" if not spec.is_widget else "give it a value",
                    )
                continue
            if isinstance(value, Link):
                if self._check_link(node_id, spec, value):
                    links[spec.name] = value
                continue
            if spec.type == T.ANY:  # ComfyUI passes a value given to a "*" input as it is
                constants[spec.name] = value
                continue
            if not spec.is_widget and not (spec.force_input and spec.type in T.WIDGET_TYPES):
                # A forceInput widget type still takes a value: ComfyUI type-checks links only and
                # checks a constant as the widget it would be (below).
                self.issue(
                    E.INVALID_INPUT_TYPE,
                    f"input {spec.name!r} expects a link from a {spec.type} output, got the value {value!r}",
                    node_id,
                    spec.name,
                    details="connect a node to it",
                )
                continue
            converted = self._convert(node_id, spec, value, definition)
            if converted is not _MISSING:
                constants[spec.name] = converted
        taken = undeclared_inputs_taken(definition)
        if taken is not None:
            self._undeclared_inputs(node_id, specs, definition, constants, links, taken)
        else:
            self._no_undeclared_links(node_id, specs, definition)
        if definition.validate is not None and len(self.issues) == before:
            self._custom_validate(node_id, definition, constants)
        lazy = frozenset(s.name for s in specs if s.lazy)
        return PreparedNode(node_id, node.node_type, definition, constants, links, lazy)

    def _undeclared_inputs(
        self,
        node_id: str,
        specs: tuple[Input, ...],
        definition: NodeDefinition,
        constants: dict[str, Any],
        links: dict[str, Link],
        taken: str,
    ) -> None:
        """A node whose inputs are open-ended (a classic "optional" dict claiming every name) receives
        every other input of the prompt too, linked or set, as "*" inputs; any other pack node receives
        the undeclared linked ones (their source must exist; no type is declared to check). A constant
        it does not declare is dropped, as ComfyUI drops it."""
        declared = {spec.name for spec in specs} | set(definition.hidden)
        for name, value in self.workflow.nodes[node_id].inputs.items():
            if name in declared:
                continue
            if not isinstance(value, Link):
                if taken == ANY_INPUT_ALL:
                    constants[name] = value
            elif self._check_link(node_id, Input(name, T.ANY, optional=True), value):
                links[name] = value

    def _no_undeclared_links(
        self, node_id: str, specs: tuple[Input, ...], definition: NodeDefinition
    ) -> None:
        """A built-in node takes only what it declares: a link to a name it lacks would run its source for
        nothing (a renamed input, a workflow from another version), so it is reported."""
        declared = {spec.name for spec in specs} | set(definition.hidden)
        for name, value in self.workflow.nodes[node_id].inputs.items():
            if isinstance(value, Link) and name not in declared:
                self.issue(
                    E.BAD_LINKED_INPUT,
                    f"input {name!r} is linked, but {definition.node_type} has no input of that name",
                    node_id,
                    name,
                    details="remove the link (inputs: " + ", ".join(s.name for s in specs) + ")",
                )

    def _check_link(self, node_id: str, spec: Input, link: Link) -> bool:
        source = self.workflow.nodes.get(link.node_id)
        if source is None:
            self.issue(
                E.BAD_LINKED_INPUT,
                f"input {spec.name!r} is linked to node {link.node_id!r}, which is not in the workflow",
                node_id,
                spec.name,
                details="reconnect the input",
            )
            return False
        source_def = self.registry.get(source.node_type)
        if source_def is None:
            return True  # the source's own missing_node_type issue says what is wrong
        outputs = source_def.outputs
        if not 0 <= link.output_index < len(outputs):
            self.issue(
                E.BAD_LINKED_INPUT,
                f"input {spec.name!r} is linked to output {link.output_index} of node {link.node_id} "
                f"({source.node_type}), which has {len(outputs)} output(s)",
                node_id,
                spec.name,
                details="reconnect the input to an existing output",
            )
            return False
        produced = outputs[link.output_index].type
        wanted = spec.type if spec.type != T.COMBO else T.STRING
        if not T.types_compatible(produced, wanted) and not (spec.type == T.COMBO and produced == T.COMBO):
            self.issue(
                E.RETURN_TYPE_MISMATCH,
                f"input {spec.name!r} expects {spec.type} but node {link.node_id} ({source.node_type}) "
                f"output {link.output_index} gives {produced}",
                node_id,
                spec.name,
                details=f"connect a {spec.type} output instead",
                extra={"received_type": produced, "linked_node": link.to_json()},
            )
            return False
        return True

    def _convert(self, node_id: str, spec: Input, value: Any, definition: NodeDefinition) -> Any:
        try:
            converted = convert_widget_value(spec, value)
        except (TypeError, ValueError):
            self.issue(
                E.INVALID_INPUT_TYPE,
                f"input {spec.name!r}: {value!r} is not a valid {spec.type}",
                node_id,
                spec.name,
                details=f"give a {spec.type} value",
                extra={"received_value": value},
            )
            return _MISSING
        if spec.name in definition.validate_replaces:
            return converted
        if spec.type in (T.INT, T.FLOAT):
            if spec.min is not None and converted < spec.min:
                self.issue(
                    E.VALUE_SMALLER_THAN_MIN,
                    f"input {spec.name!r}: {converted} is smaller than the minimum {spec.min}",
                    node_id,
                    spec.name,
                    details=f"use a value between {spec.min} and {spec.max}",
                    extra={"received_value": converted},
                )
            elif spec.max is not None and converted > spec.max:
                self.issue(
                    E.VALUE_BIGGER_THAN_MAX,
                    f"input {spec.name!r}: {converted} is bigger than the maximum {spec.max}",
                    node_id,
                    spec.name,
                    details=f"use a value between {spec.min} and {spec.max}",
                    extra={"received_value": converted},
                )
        elif spec.type == T.COMBO:
            choices = self.registry.choices_for(spec) or []
            if converted not in choices and not self._annotated_file_listed(spec, converted):
                shown = ", ".join(map(str, choices[:20])) + (" ..." if len(choices) > 20 else "")
                self.issue(
                    E.VALUE_NOT_IN_LIST,
                    f"input {spec.name!r}: {converted!r} is not among the choices",
                    node_id,
                    spec.name,
                    details=f"choose one of: {shown}"
                    if choices
                    else "there are no choices (is the folder empty?)",
                    extra={"received_value": converted, "input_config": choices[:100]},
                )
        return converted

    def _annotated_file_listed(self, spec: Input, value: Any) -> bool:
        """A data-folder file combo (input, output, temp: LoadImage, LoadImageOutput) also takes ComfyUI's
        annotated names ("x.png [output]", as its frontend writes them): valid when the bare name is
        listed in the named folder, so the name never reaches outside it (the node resolves it with
        Folders.annotated_path)."""
        if not (
            isinstance(spec.choices, FileChoices)
            and spec.choices.kind in DATA_KINDS
            and isinstance(value, str)
        ):
            return False
        bare, kind = split_annotated(value)
        if kind is None:
            return False
        listed = self.registry.choices_for(replace(spec, choices=replace(spec.choices, kind=kind))) or []
        return bare in listed

    def _custom_validate(self, node_id: str, definition: NodeDefinition, constants: dict[str, Any]) -> None:
        assert definition.validate is not None
        try:
            params = inspect.signature(definition.validate).parameters
            takes_all = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
            arguments = {k: v for k, v in constants.items() if takes_all or k in params}
            result = definition.validate(**arguments)
        except Exception as exc:  # a plugin's validate hook must not take validation down
            self.issue(
                E.EXCEPTION_DURING_VALIDATION,
                f"the node's validate hook raised {type(exc).__name__}: {exc}",
                node_id,
                details="this is a bug in the node; report it to its author",
            )
            return
        messages: list[str] = []
        if isinstance(result, str):
            messages = [result]
        elif isinstance(result, list | tuple):
            messages = [str(m) for m in result if m not in (None, True)]
        for message in messages:
            self.issue(E.CUSTOM_VALIDATION_FAILED, message, node_id)


_MISSING: Any = object()


def _id_sort_key(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def convert_widget_value(spec: Input, value: Any) -> Any:
    """Convert a JSON value to the widget's type the way ComfyUI does, raising ValueError if impossible."""
    kind = spec.type
    if kind == T.INT:
        if isinstance(value, bool):
            raise ValueError("a boolean is not an INT")
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("not finite")
            return int(value)
        return int(value) if isinstance(value, int) else int(str(value).strip())
    if kind == T.FLOAT:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a FLOAT")
        result = float(value)
        if not math.isfinite(result):
            raise ValueError("not finite")
        return result
    if kind == T.BOOLEAN:
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError("not a boolean")
    if kind == T.STRING:
        if isinstance(value, dict | list):
            raise ValueError("not a string")
        return value if isinstance(value, str) else str(value)
    return value  # COMBO: checked against the choices


def validate_workflow(
    workflow: Workflow, registry: NodeRegistry, targets: Iterable[str] | None = None, *, partial: bool = False
) -> ValidatedWorkflow:
    """Check the whole workflow; raise WorkflowValidationError listing every problem found.

    With `partial`, as ComfyUI validates a queued prompt: when only some output nodes fail (through their
    own problems or those of nodes they need), the result keeps the valid outputs and carries the failed
    ones' problems in `rejected` / `node_errors`; it raises only when no output is valid."""
    return _Validator(workflow, registry).run(targets, partial)
