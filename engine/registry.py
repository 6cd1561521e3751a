"""The node registry: checks node definitions when they arrive and publishes their schema.

A registry is an object owned by the app or CLI (never a module global). The schema it publishes is
ComfyUI's `/object_info` shape, generated from the declarations, so the canvas and API clients build
their widgets from it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

from engine import types as T
from engine.declarations import (
    HIDDEN_KINDS,
    DynamicChoices,
    FileChoices,
    Input,
    NodeDefinition,
    RuntimeChoices,
)
from engine.errors import NodeDefinitionError

FileResolver = Callable[[FileChoices], list[str]]
ChoiceSource = Callable[[], list[str]]


class DuplicateNodeError(NodeDefinitionError):
    """A node type name is already taken (e.g. a plugin trying to replace a built-in node)."""


class NodeRegistry:
    """`resolve_files` lists a folder kind's files (FileChoices); `choice_sources` maps a RuntimeChoices
    kind ("samplers", "schedulers") to the runtime service listing it. Both are read on every schema
    request and validation, so the lists are always current."""

    def __init__(
        self,
        resolve_files: FileResolver | None = None,
        choice_sources: dict[str, ChoiceSource] | None = None,
    ):
        self._definitions: dict[str, NodeDefinition] = {}
        self._sources: dict[str, str] = {}
        self._builtin: set[str] = set()
        self.resolve_files = resolve_files
        self.choice_sources = dict(choice_sources or {})

    # -- registration -------------------------------------------------------------------------

    def register(self, definition: NodeDefinition, *, source: str = "nodes", builtin: bool = False) -> None:
        """Add a node type. Raises NodeDefinitionError (naming the node) if the declaration is wrong.

        A name that is already registered is refused: a plugin cannot silently replace a built-in node,
        and between two plugins the first one loaded keeps the name. Built-in nodes may use only the known
        socket types (a typo fails here); plugins may declare new ones.
        """
        check_definition(definition)
        if builtin:
            _check_known_types(definition)
        name = definition.node_type
        if name in self._definitions:
            owner = self._sources[name]
            kind = "built-in node" if name in self._builtin else f"node from {owner!r}"
            raise DuplicateNodeError(
                name, f"already registered as a {kind}; {source!r} cannot replace it (rename the node type)"
            )
        self._definitions[name] = definition.with_source(source)
        self._sources[name] = source
        if builtin:
            self._builtin.add(name)

    # -- lookup -------------------------------------------------------------------------------

    def get(self, node_type: str) -> NodeDefinition | None:
        return self._definitions.get(node_type)

    def __contains__(self, node_type: object) -> bool:
        return node_type in self._definitions

    def __iter__(self) -> Iterator[NodeDefinition]:
        return iter(self._definitions.values())

    def __len__(self) -> int:
        return len(self._definitions)

    def source_of(self, node_type: str) -> str | None:
        return self._sources.get(node_type)

    def choices_for(self, spec: Input) -> list[str] | None:
        return spec.resolved_choices(self._resolve_choices)

    def _resolve_choices(self, choices: DynamicChoices) -> list[str]:
        if isinstance(choices, RuntimeChoices):
            source = self.choice_sources.get(choices.kind)
            return list(source()) if source is not None else []
        return self.resolve_files(choices) if self.resolve_files is not None else []

    # -- schema -------------------------------------------------------------------------------

    def object_info(self) -> dict[str, Any]:
        return {name: self.node_info(name) for name in self._definitions}

    def node_info(self, node_type: str) -> dict[str, Any]:
        definition = self._definitions[node_type]
        required: dict[str, Any] = {}
        optional: dict[str, Any] = {}
        for spec in definition.current_inputs():
            (optional if spec.optional else required)[spec.name] = self.input_schema(spec)
        info_input: dict[str, Any] = {"required": required}
        if optional:
            info_input["optional"] = optional
        if definition.hidden:
            info_input["hidden"] = dict(definition.hidden)
        outputs = definition.outputs
        info: dict[str, Any] = {
            "input": info_input,
            "input_order": {"required": list(required), **({"optional": list(optional)} if optional else {})},
            "output": [o.type for o in outputs],
            "output_is_list": [o.is_list for o in outputs],
            "output_name": [o.display_name for o in outputs],
            "name": definition.node_type,
            "display_name": definition.title,
            "description": definition.description,
            "python_module": definition.python_module,
            "category": definition.category,
            "output_node": definition.output_node,
            "deprecated": definition.deprecated,
            "experimental": definition.experimental,
        }
        if any(o.tooltip for o in outputs):
            info["output_tooltips"] = [o.tooltip or "" for o in outputs]
        info.update(definition.extra_schema)
        return info

    def input_schema(self, spec: Input) -> list[Any]:
        options: dict[str, Any] = {}
        if spec.default is not None:
            options["default"] = spec.default
        for key in ("min", "max", "step", "round", "tooltip", "display"):
            value = getattr(spec, key)
            if value is not None:
                options[key] = value
        if spec.multiline:
            options["multiline"] = True
        if spec.lazy:
            options["lazy"] = True
        if spec.force_input:
            options["forceInput"] = True
        if spec.control_after_generate:
            options["control_after_generate"] = True
        options.update(spec.extra)
        if spec.type == T.COMBO:
            # Classic list form: the first element is the list of choices.
            return [self.choices_for(spec) or [], options]
        return [spec.type, options] if options else [spec.type]


def check_definition(definition: NodeDefinition) -> None:
    """Reject malformed declarations at registration, with the node's name and the exact problem."""
    name = definition.node_type
    if not isinstance(name, str) or not name.strip():
        raise NodeDefinitionError(repr(name), "node type must be a non-empty string")
    if not callable(definition.function):
        raise NodeDefinitionError(name, "function is not callable")
    seen: set[str] = set()
    inputs = definition.current_inputs()
    for spec in inputs:
        if not isinstance(spec, Input):
            raise NodeDefinitionError(name, f"input {spec!r} is not an api.Input")
        if not spec.name or not isinstance(spec.name, str):
            raise NodeDefinitionError(name, f"an input has an invalid name {spec.name!r}")
        if spec.name in seen:
            raise NodeDefinitionError(name, f"input {spec.name!r} is declared twice")
        seen.add(spec.name)
        _check_input(name, spec)
    for index, output in enumerate(definition.outputs):
        if not T.is_valid_type_name(output.type):
            raise NodeDefinitionError(name, f"output {index} has an invalid socket type {output.type!r}")
    for param, kind in definition.hidden.items():
        if kind not in HIDDEN_KINDS:
            raise NodeDefinitionError(name, f"hidden input {param!r} has unknown kind {kind!r}")
    if definition.check_lazy is not None and not any(s.lazy for s in inputs):
        raise NodeDefinitionError(name, "check_lazy is given but no input is declared lazy=True")
    if any(s.lazy for s in inputs) and definition.check_lazy is None:
        raise NodeDefinitionError(name, "lazy inputs need a check_lazy hook saying which of them are needed")
    _check_signature(definition, inputs)


def _check_known_types(definition: NodeDefinition) -> None:
    declared = [(f"input {s.name!r}", s.type) for s in definition.current_inputs()]
    declared += [(f"output {i}", o.type) for i, o in enumerate(definition.outputs)]
    for where, type_name in declared:
        unknown = sorted(T.parts(type_name) - T.BUILTIN_SOCKET_TYPES)
        if unknown:
            raise NodeDefinitionError(
                definition.node_type,
                f"{where} has the unknown socket type {', '.join(unknown)!s} (a built-in node may use only "
                f"{', '.join(sorted(T.BUILTIN_SOCKET_TYPES))})",
            )


def _check_input(node_type: str, spec: Input) -> None:
    where = f"input {spec.name!r}"
    if not T.is_valid_type_name(spec.type):
        raise NodeDefinitionError(node_type, f"{where} has an invalid socket type {spec.type!r}")
    if spec.type in (T.INT, T.FLOAT):
        lo, hi = spec.min, spec.max
        if lo is not None and hi is not None and lo > hi:
            raise NodeDefinitionError(node_type, f"{where}: min {lo} is greater than max {hi}")
        if spec.default is not None:
            if isinstance(spec.default, bool) or not isinstance(spec.default, int | float):
                raise NodeDefinitionError(node_type, f"{where}: default {spec.default!r} is not a number")
            if spec.type == T.INT and not float(spec.default).is_integer():
                raise NodeDefinitionError(
                    node_type, f"{where}: INT default {spec.default!r} is not an integer"
                )
            if isinstance(spec.default, float) and math.isnan(spec.default):
                raise NodeDefinitionError(node_type, f"{where}: default is NaN")
            if lo is not None and spec.default < lo:
                raise NodeDefinitionError(node_type, f"{where}: default {spec.default} is below min {lo}")
            if hi is not None and spec.default > hi:
                raise NodeDefinitionError(node_type, f"{where}: default {spec.default} is above max {hi}")
        if spec.step is not None and spec.step <= 0:
            raise NodeDefinitionError(node_type, f"{where}: step must be positive, got {spec.step}")
    elif spec.type == T.STRING:
        if spec.default is not None and not isinstance(spec.default, str):
            raise NodeDefinitionError(node_type, f"{where}: STRING default {spec.default!r} is not a string")
    elif spec.type == T.BOOLEAN:
        if spec.default is not None and not isinstance(spec.default, bool):
            raise NodeDefinitionError(node_type, f"{where}: BOOLEAN default {spec.default!r} is not a bool")
    elif spec.type == T.COMBO:
        if spec.choices is None:
            raise NodeDefinitionError(node_type, f"{where}: a COMBO input needs choices")
        if not isinstance(spec.choices, FileChoices | RuntimeChoices) and not callable(spec.choices):
            choices = list(spec.choices)
            if not all(isinstance(c, str | int | float) for c in choices):
                raise NodeDefinitionError(node_type, f"{where}: choices must be strings or numbers")
            if spec.default is not None and spec.default not in choices:
                raise NodeDefinitionError(
                    node_type, f"{where}: default {spec.default!r} is not one of the choices {choices[:10]}"
                )
    if spec.control_after_generate and spec.type != T.INT:
        raise NodeDefinitionError(node_type, f"{where}: control_after_generate is only for INT inputs")


def _check_signature(definition: NodeDefinition, inputs: tuple[Input, ...]) -> None:
    try:
        signature = inspect.signature(definition.function)
    except (TypeError, ValueError):  # builtins without signatures: nothing to check
        return
    params = signature.parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    expected = [s.name for s in inputs] + list(definition.hidden)
    missing = [n for n in expected if n not in params]
    if missing:
        raise NodeDefinitionError(
            definition.node_type,
            f"function {getattr(definition.function, '__name__', '?')}() has no parameter for input(s) {missing}",
        )
