"""ComfyUI's V3 node classes (comfy_api.latest.io.ComfyNode) as NodeDefinitions: the engine side of the V3 API.

The schema a class declares (define_schema) is read through ComfyUI's own V1 view of it - the INPUT_TYPES dict
every V3 class also offers - so V3 inputs get exactly the classic adapter's parsing and /object_info shape.
The node function calls `execute` on a per-call clone of the class that carries the hidden values
(`cls.hidden.unique_id`...), awaits it if it is async, and turns what it returns (io.NodeOutput, a tuple, a
classic dict, an ExecutionBlocker) into what the executor takes: a NodeOutput, or an {"expand": ...} dict.

Duck-typed on the env classes (engine code never imports env modules): a schema has ComfyUI's attributes
(node_id, inputs, outputs, hidden, is_output_node...), inputs have id/optional/as_dict()/get_io_type(), and
dynamic ones get_dynamic() and diffgraph_fold() (env/comfy_api/latest/_io_dynamic.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from engine import types as T
from engine.declarations import HIDDEN_KINDS, HIDDEN_UNIQUE_ID, NodeDefinition, NodeOutput, Output
from engine.errors import NodeDefinitionError
from engine.execution.expansion import ExecutionBlocker
from engine.plugins.classic import (
    ACCEPTS_ANY_INPUT,
    ANY_INPUT_ALL,
    ANY_INPUT_LINKED,
    parse_input_types,
    plain_type,
    run_awaitable,
)

BASE_MARKER = "_DIFFGRAPH_BASE"  # set in the own __dict__ of the env base classes (ComfyNode and its base)


def overrides(cls: type, name: str) -> bool:
    """Whether a class below the V3 base classes defines `name` (ComfyUI calls validate_inputs,
    fingerprint_inputs and check_lazy_status only when a node overrides them)."""
    for klass in cls.__mro__:
        if BASE_MARKER in klass.__dict__:
            return False
        if name in klass.__dict__:
            return True
    return False


def _flat_inputs(schema: Any) -> list[Any]:
    """The schema's inputs with the dynamic ones (Autogrow, DynamicCombo) replaced by their parts."""
    flat: list[Any] = []
    for spec in schema.inputs or []:
        dynamic = getattr(spec, "get_dynamic", None)
        flat.extend(dynamic() if callable(dynamic) and hasattr(spec, "diffgraph_fold") else [spec])
    return flat


def v1_inputs(schema: Any) -> dict[str, Any]:
    """ComfyUI's INPUT_TYPES() for a V3 schema: {"required": {id: (type, options)}, "optional": ...,
    "hidden": {name: (KIND,)}}."""
    declared: dict[str, Any] = {"required": {}}
    for spec in _flat_inputs(schema):
        options = dict(spec.as_dict())
        options.pop("optional", None)
        declared.setdefault("optional" if spec.optional else "required", {})[spec.id] = (
            spec.get_io_type(),
            options,
        )
    for member in schema.hidden or []:
        declared.setdefault("hidden", {})[member.name] = (member.value,)
    return declared


def v1_node_info(schema: Any, cls: type) -> dict[str, Any]:
    """The node's /object_info entry as ComfyUI builds it from the schema (GET_NODE_INFO_V1)."""
    declared = v1_inputs(schema)
    outputs = schema.outputs or []
    return {
        "input": declared,
        "input_order": {section: list(entries) for section, entries in declared.items()},
        "output": [o.io_type for o in outputs],
        "output_is_list": [bool(o.is_output_list) for o in outputs],
        "output_name": [o.display_name or o.io_type for o in outputs],
        "output_tooltips": [o.tooltip for o in outputs],
        "name": schema.node_id,
        "display_name": schema.display_name,
        "description": schema.description,
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", None) or "nodes",
        "category": schema.category,
        "output_node": schema.is_output_node,
        "deprecated": schema.is_deprecated,
        "experimental": schema.is_experimental,
        "api_node": schema.is_api_node,
    }


def _hidden_params(schema: Any, input_names: set[str]) -> dict[str, str]:
    """Parameter name -> hidden kind: the member's name (unique_id, prompt...) unless an input has it."""
    hidden: dict[str, str] = {}
    kinds = [str(member.value) for member in schema.hidden or []]
    if schema.not_idempotent and HIDDEN_UNIQUE_ID not in kinds:
        kinds.append(HIDDEN_UNIQUE_ID)  # a per-node cache key: ComfyUI never shares such a node's result
    for kind in kinds:
        if kind not in HIDDEN_KINDS:
            continue  # e.g. API_KEY_COMFY_ORG: cls.hidden reads None for it
        param = kind.lower()
        hidden[param if param not in input_names else f"hidden_{param}"] = kind
    return hidden


def _folds(schema: Any) -> list[tuple[str, list[str], Callable[[dict[str, Any]], Any]]]:
    return [
        (spec.id, [part.id for part in spec.get_dynamic()], spec.diffgraph_fold)
        for spec in schema.inputs or []
        if hasattr(spec, "diffgraph_fold")
    ]


def definition_from_v3(
    cls: Any, node_type: str, display_name: str | None = None, warnings: list[str] | None = None
) -> NodeDefinition:
    """The NodeDefinition of a V3 node class registered under `node_type`."""
    schema = cls.GET_SCHEMA()
    inputs, _, _ = parse_input_types(node_type, _without_hidden(v1_inputs(schema)), warnings)
    hidden = _hidden_params(schema, {spec.name for spec in inputs})
    outputs = tuple(
        Output(
            type=plain_type(o.io_type) if isinstance(o.io_type, str) else T.COMBO,
            name=o.display_name,
            is_list=bool(o.is_output_list),
            tooltip=o.tooltip,
        )
        for o in schema.outputs or []
    )
    folds = _folds(schema)
    enable_expand = bool(getattr(schema, "enable_expand", False))

    def function(**kwargs: Any) -> Any:
        by_kind = {kind: kwargs.pop(param, None) for param, kind in hidden.items()}
        for param, parts, fold in folds:
            kwargs[param] = fold({part: kwargs.pop(part) for part in parts if part in kwargs})
        clone = cls.PREPARE_CLASS_CLONE(by_kind)
        result = run_awaitable(clone.execute(**kwargs))
        return v3_result(result, len(outputs), node_type, enable_expand)

    # A pack node gets the prompt's undeclared linked inputs as ComfyUI passes them; constants too with
    # accept_all_inputs.
    setattr(
        function,
        ACCEPTS_ANY_INPUT,
        ANY_INPUT_ALL if getattr(schema, "accept_all_inputs", False) else ANY_INPUT_LINKED,
    )
    validate, replaces = _validate_hook(cls)
    extra: dict[str, Any] = {"api_node": bool(schema.is_api_node)}
    if getattr(schema, "search_aliases", None):
        extra["search_aliases"] = list(schema.search_aliases)
    return NodeDefinition(
        node_type=node_type,
        function=function,
        inputs=inputs,
        outputs=outputs,
        category=str(schema.category),
        display_name=display_name or schema.display_name,
        description=str(schema.description or ""),
        output_node=bool(schema.is_output_node),
        fingerprint=cls.fingerprint_inputs if overrides(cls, "fingerprint_inputs") else None,
        validate=validate,
        validate_replaces=replaces,
        check_lazy=_lazy_hook(cls, inputs),
        input_is_list=bool(schema.is_input_list),
        hidden=hidden,
        deprecated=bool(schema.is_deprecated),
        experimental=bool(schema.is_experimental),
        inputs_provider=lambda: _current_inputs(cls, node_type),
        extra_schema=extra,
    )


def _without_hidden(declared: dict[str, Any]) -> dict[str, Any]:
    return {section: entries for section, entries in declared.items() if section != "hidden"}


def _current_inputs(cls: Any, node_type: str) -> Any:
    """The inputs as the schema declares them now: define_schema often lists a folder's files."""
    return parse_input_types(node_type, _without_hidden(v1_inputs(cls.FINALIZE_SCHEMA())))[0]


def _lazy_hook(cls: Any, inputs: tuple[Any, ...]) -> Callable[..., Any] | None:
    if not any(spec.lazy for spec in inputs):
        return None
    if overrides(cls, "check_lazy_status"):
        return cls.check_lazy_status  # type: ignore[no-any-return]
    return lambda **_inputs: []  # ComfyUI evaluates no lazy input of a node without check_lazy_status


def _validate_hook(cls: Any) -> tuple[Callable[..., Any] | None, frozenset[str]]:
    """validate_inputs returns True or an error text; the inputs it names skip the built-in range checks."""
    if not overrides(cls, "validate_inputs"):
        return None, frozenset()
    hook = cls.validate_inputs
    params = inspect.signature(hook).parameters
    replaces = frozenset(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)

    def validate(**kwargs: Any) -> str | None:
        outcome = run_awaitable(hook(**kwargs))
        return None if outcome is True or outcome is None else str(outcome)

    validate.__signature__ = inspect.signature(hook)  # type: ignore[attr-defined]
    return validate, replaces


def v3_result(result: Any, n_outputs: int, node_type: str, enable_expand: bool) -> Any:
    """What a V3 execute returned, in the executor's terms. Values beyond the declared outputs are dropped
    and missing ones are None, as ComfyUI's merge of results leaves them."""
    ui: Any = None
    expand = block = None
    if isinstance(result, ExecutionBlocker):
        return (result,) * n_outputs
    if result is None:
        values: Any = ()
    elif isinstance(result, tuple):
        values = result
    elif isinstance(result, dict):
        values, ui, expand = result.get("result") or (), result.get("ui"), result.get("expand")
        if isinstance(values, ExecutionBlocker):
            return (
                {**result, "result": (values,) * n_outputs} if expand is not None else (values,) * n_outputs
            )
    elif hasattr(result, "args") and hasattr(result, "block_execution"):  # io.NodeOutput
        values, ui, expand, block = result.args, result.ui, result.expand, result.block_execution
    else:
        raise NodeDefinitionError(
            node_type, f"execute returned {type(result).__name__}, not an io.NodeOutput"
        )
    if ui is not None and not isinstance(ui, dict):
        ui = ui.as_dict()  # a ui.* object (PreviewImage, PreviewText...)
    values = tuple(values)[:n_outputs] + (None,) * max(0, n_outputs - len(values))
    if block is not None:
        values = (ExecutionBlocker(block),) * n_outputs
    if expand is not None:
        if not enable_expand:
            raise Exception(
                f"Node {node_type} is not expandable, but expand included in NodeOutput; developer should set "
                "enable_expand=True on node's Schema to allow this."
            )
        return {"result": values, "expand": expand, "ui": ui}
    return NodeOutput(*values, ui=ui)
