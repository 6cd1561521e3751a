"""Calling a node function the way ComfyUI maps it over list inputs, and reading what it returns.

List semantics: a node whose `input_is_list` is false is called once per element, inputs broadcast to the
longest list (shorter lists repeat their last element); outputs declared `is_list` are concatenated
across calls, the others collected one per call. A call whose inputs hold an ExecutionBlocker is not made:
its outputs are blockers. A call returning `{"expand": ...}` is kept as (graph, values) for the executor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.declarations import NodeDefinition, NodeOutput
from engine.execution.expansion import ExecutionBlocker, expansion_of, set_call_index


def call_mapped(
    definition: NodeDefinition, inputs: dict[str, list[Any]], extra: dict[str, Any], check_blocked: bool
) -> tuple[
    list[list[Any]],
    dict[str, Any] | None,
    list[tuple[Any, tuple[Any, ...]]] | None,
    bool,
    list[ExecutionBlocker],
]:
    """Call the node once per element (or once with the lists). Returns the merged outputs, the merged UI
    data, the per-call (graph, result values) when a call asked for an expansion (else None), whether an
    output holds a blocker, and the blockers that stopped calls (only looked for if `check_blocked`)."""
    n_outputs = len(definition.outputs)
    outputs: list[list[Any]] = [[] for _ in range(n_outputs)]
    ui: dict[str, Any] | None = None
    if definition.input_is_list:
        calls = [{**inputs, **extra}]
    else:
        lengths = [len(v) for v in inputs.values()]
        if any(length == 0 for length in lengths):
            return outputs, None, None, False, []  # an empty list input: nothing to map over
        count = max(lengths, default=1)
        calls = [{name: v[min(i, len(v) - 1)] for name, v in inputs.items()} | extra for i in range(count)]
    per_call: list[tuple[Any, tuple[Any, ...]]] = []
    expanded = blocked = False
    stopped_by: list[ExecutionBlocker] = []
    try:  # free when nothing is raised (3.11); a failed later call must not leave its index set
        for index, arguments in enumerate(calls):
            blocker = blocker_in(arguments, definition.input_is_list) if check_blocked else None
            graph = call_ui = None
            if blocker is not None:
                stopped_by.append(blocker)
                # A message is reported once, here; downstream the blocker travels on silently.
                silent = blocker if blocker.message is None else ExecutionBlocker(None)
                values: tuple[Any, ...] = (silent,) * n_outputs
            else:
                if index:  # index 0 is what every single call sees (reset below after several)
                    set_call_index(index)
                result = definition.function(**arguments)
                expansion = expansion_of(result) if type(result) is dict else None
                if expansion is not None:
                    graph, raw_values, call_ui = expansion
                    values, expanded = _result_values(definition, raw_values), True
                else:
                    values, call_ui = _normalize(definition, result)
            per_call.append((graph, values))
            for position, value in enumerate(values[:n_outputs]):
                if definition.outputs[position].is_list and not isinstance(value, ExecutionBlocker):
                    outputs[position].extend(value)
                    blocked = blocked or any(isinstance(v, ExecutionBlocker) for v in value)
                else:
                    outputs[position].append(value)
                    blocked = blocked or isinstance(value, ExecutionBlocker)
            if call_ui:
                ui = ui or {}
                for key, items in call_ui.items():
                    if isinstance(items, list | tuple):  # ComfyUI merges every UI entry into a list
                        ui.setdefault(key, []).extend(items)
                    else:
                        ui[key] = items
    except BaseException:
        set_call_index(0)
        raise
    if len(calls) > 1:
        set_call_index(0)
    return outputs, ui, per_call if expanded else None, blocked, stopped_by


def blocker_in(arguments: Mapping[str, Any], input_is_list: bool) -> ExecutionBlocker | None:
    for value in arguments.values():
        if isinstance(value, ExecutionBlocker):
            return value
        if input_is_list and isinstance(value, list):
            for item in value:
                if isinstance(item, ExecutionBlocker):
                    return item
    return None


def _result_values(definition: NodeDefinition, values: Any) -> tuple[Any, ...]:
    """An expansion's result as one value per output (a lone blocker blocks them all; missing ones are None)."""
    n_outputs = len(definition.outputs)
    if isinstance(values, ExecutionBlocker):
        return (values,) * n_outputs
    values = tuple(values or ())
    return values + (None,) * (n_outputs - len(values))


def _normalize(definition: NodeDefinition, result: Any) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    ui = None
    if isinstance(result, NodeOutput):
        values, ui = result.values, result.ui
    elif isinstance(result, dict) and ("ui" in result or "result" in result):
        raw, ui = result.get("result"), result.get("ui")
        values = (raw,) * len(definition.outputs) if isinstance(raw, ExecutionBlocker) else tuple(raw or ())
    elif isinstance(result, tuple | list):
        values = tuple(result)
    elif isinstance(result, ExecutionBlocker):  # ComfyUI: a returned blocker blocks every output
        values = (result,) * len(definition.outputs)
    elif result is None and not definition.outputs:
        values = ()
    else:
        raise TypeError(
            f"{definition.node_type} returned {type(result).__name__}; a node function must return a tuple "
            f"with one value per output ({len(definition.outputs)}), a NodeOutput, or {{'ui':..., 'result':...}}"
        )
    if len(values) != len(definition.outputs) and not (not values and definition.output_node):
        raise TypeError(
            f"{definition.node_type} returned {len(values)} value(s) but declares {len(definition.outputs)} output(s)"
        )
    for index, output in enumerate(definition.outputs):
        if (
            output.is_list
            and index < len(values)
            and not isinstance(values[index], list | tuple | ExecutionBlocker)
        ):
            raise TypeError(
                f"{definition.node_type} output {index} is declared as a list but got {type(values[index]).__name__}"
            )
    return values, ui
