"""The executor: runs what the targets need, in dependency order, reusing cached results by content.

List semantics (ComfyUI's): every output is held as a list of values. A node whose `input_is_list` is
false is called once per element, inputs broadcast to the longest list (shorter lists repeat their last
element); outputs declared `is_list` are concatenated across calls, the others collected one per call.

Lazy inputs: a lazy input's source runs only when the node's `check_lazy` hook asks for it. The hook is
called with the values available so far (None for lazy inputs not yet evaluated) and returns the names
it still needs; it is called again after those have run, until it asks for nothing new.

A failing node stops the nodes that depend on it; independent branches still run, and the result
reports the failure with the node id, type, message and traceback.
"""

from __future__ import annotations

import inspect
import math
import os
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.declarations import (
    HIDDEN_EXTRA_PNGINFO,
    HIDDEN_PROMPT,
    HIDDEN_UNIQUE_ID,
    NodeDefinition,
    NodeOutput,
)
from engine.errors import ExecutionInterrupted, NodeExecutionError
from engine.execution.cache import CachedResult, OutputCache, content_key, estimate_nbytes, static_key_part
from engine.execution.context import ExecutionContext, InterruptFlag, node_running
from engine.execution.events import (
    EventSink,
    ExecutionCached,
    ExecutionFailed,
    ExecutionFinished,
    ExecutionInterruptedEvent,
    ExecutionStarted,
    NodeExecuted,
    NodeExecuting,
    discard,
)
from engine.graph.validate import PreparedNode, ValidatedWorkflow, validate_workflow
from engine.graph.workflow import Workflow
from engine.registry import NodeRegistry

SUCCESS, ERROR, INTERRUPTED = "success", "error", "interrupted"


@dataclass
class ExecutionResult:
    prompt_id: str
    status: str
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    ui_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[NodeExecutionError] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # node id -> id of the failed node it needed
    results: dict[str, CachedResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    def output(self, node_id: str, index: int = 0) -> Any:
        """The first value of an output (what a non-list output holds)."""
        return self.results[node_id].outputs[index][0]

    def output_list(self, node_id: str, index: int = 0) -> list[Any]:
        return self.results[node_id].outputs[index]


class Executor:
    """Runs validated workflows against a registry, sharing one output cache across runs."""

    def __init__(
        self,
        registry: NodeRegistry,
        cache: OutputCache | None = None,
        *,
        services: Mapping[str, Any] | None = None,
    ):
        self.registry = registry
        self.cache = cache if cache is not None else OutputCache()
        self.services = dict(services or {})

    def run(
        self,
        workflow: Workflow,
        *,
        targets: Iterable[str] | None = None,
        prompt_id: str | None = None,
        sink: EventSink = discard,
        interrupt: InterruptFlag | None = None,
        extra_data: Mapping[str, Any] | None = None,
    ) -> ExecutionResult:
        """Validate then execute. Raises WorkflowValidationError (with every problem) if invalid."""
        validated = validate_workflow(workflow, self.registry, targets)
        return self.execute(
            validated, prompt_id=prompt_id, sink=sink, interrupt=interrupt, extra_data=extra_data
        )

    def execute(
        self,
        validated: ValidatedWorkflow,
        *,
        prompt_id: str | None = None,
        sink: EventSink = discard,
        interrupt: InterruptFlag | None = None,
        extra_data: Mapping[str, Any] | None = None,
    ) -> ExecutionResult:
        run = _Run(
            self, validated, prompt_id or uuid.uuid4().hex, sink, interrupt or InterruptFlag(), extra_data
        )
        return run.go()


class _Run:
    def __init__(
        self,
        executor: Executor,
        validated: ValidatedWorkflow,
        prompt_id: str,
        sink: EventSink,
        interrupt: InterruptFlag,
        extra_data: Mapping[str, Any] | None,
    ):
        self.executor = executor
        self.cache = executor.cache
        self.validated = validated
        self.nodes = validated.nodes
        self.sink = sink
        self.interrupt = interrupt
        self.extra_data = dict(extra_data or {})
        self.result = ExecutionResult(prompt_id, SUCCESS)
        self.values: dict[str, CachedResult] = self.result.results
        self.keys: dict[str, bytes] = {}
        self.lazy_requested: dict[str, set[str]] = {}
        self._api_prompt: dict[str, Any] | None = None

    # -- driver ---------------------------------------------------------------------------------

    def go(self) -> ExecutionResult:
        prompt_id = self.result.prompt_id
        self.sink(ExecutionStarted(prompt_id))
        self._compute_keys()
        cached_now = [nid for nid in self.validated.order if self.keys[nid] in self.cache]
        self.sink(ExecutionCached(prompt_id, cached_now))
        try:
            for target in self.validated.targets:
                self._run_target(target)
        except ExecutionInterrupted:
            self.result.status = INTERRUPTED
            running = self._running
            self.sink(
                ExecutionInterruptedEvent(
                    prompt_id,
                    running.node_id if running else None,
                    running.node_type if running else None,
                    list(self.result.executed),
                )
            )
        if self.result.status == SUCCESS and self.result.errors:
            self.result.status = ERROR
        self.sink(ExecutionFinished(prompt_id, self.result.status, self.result.executed, self.result.cached))
        return self.result

    _running: PreparedNode | None = None

    def _compute_keys(self) -> None:
        static = self.validated.key_parts  # filled once per validated workflow, reused by re-runs
        for node_id in self.validated.order:
            node = self.nodes[node_id]
            definition = node.definition
            if node_id not in static:
                unique = node_id if HIDDEN_UNIQUE_ID in definition.hidden.values() else None
                static[node_id] = (
                    static_key_part(definition.node_type, definition.version, node.constants, unique),
                    sorted((name, link.node_id, link.output_index) for name, link in node.links.items()),
                )
            prefix, links = static[node_id]
            fingerprint = self._fingerprint(node) if definition.fingerprint is not None else None
            if isinstance(fingerprint, float) and math.isnan(fingerprint):
                fingerprint = ("always-changed", os.urandom(8).hex())
            keys = self.keys
            self.keys[node_id] = content_key(
                prefix, fingerprint, [(name, keys[source], index) for name, source, index in links]
            )

    def _fingerprint(self, node: PreparedNode) -> Any:
        hook = node.definition.fingerprint
        assert hook is not None
        arguments = _accepted(hook, node.constants)
        if _takes(hook, "context"):
            # e.g. LoadImage hashes its file and needs the folders to find it
            arguments["context"] = self._context(node)
        try:
            return hook(**arguments)
        except Exception:
            # Like ComfyUI: a fingerprint that cannot be computed means "treat as changed".
            return float("nan")

    def _run_target(self, target: str) -> None:
        stack = [target]
        visited: set[str] = set()
        while stack:
            node_id = stack[-1]
            if node_id in self.values or node_id in self.result.skipped:
                stack.pop()
                continue
            node = self.nodes[node_id]
            if node_id not in visited:
                visited.add(node_id)
                hit = self.cache.get(self.keys[node_id])
                if hit is not None:
                    self._use_cached(node, hit)
                    stack.pop()
                    continue
            pending = [src for src in self._sources_needed(node) if src not in self.values]
            failed = [src for src in pending if src in self.result.skipped]
            if failed:
                self.result.skipped[node_id] = self.result.skipped[failed[0]]
                stack.pop()
                continue
            if pending:
                stack.extend(pending)
                continue
            if node.lazy_inputs and self._request_lazy(node):
                continue  # newly requested lazy sources are now pending
            self._execute(node)
            stack.pop()

    def _sources_needed(self, node: PreparedNode) -> list[str]:
        requested = self.lazy_requested.get(node.node_id, set())
        return [
            link.node_id
            for name, link in node.links.items()
            if name not in node.lazy_inputs or name in requested
        ]

    def _request_lazy(self, node: PreparedNode) -> bool:
        """Ask the node which lazy inputs it needs; True if that added inputs still to be evaluated."""
        hook = node.definition.check_lazy
        assert hook is not None
        gathered = self._gather(node)
        available: dict[str, Any] = (
            dict(gathered)
            if node.definition.input_is_list
            else {k: v[0] if v else None for k, v in gathered.items()}
        )
        try:
            wanted = hook(**_accepted(hook, available)) or []
        except Exception as exc:
            self._fail(node, exc)
            return False
        requested = self.lazy_requested.setdefault(node.node_id, set())
        new = {name for name in wanted if name in node.links and name not in requested}
        requested |= new
        return bool(new)

    # -- one node ---------------------------------------------------------------------------------

    def _use_cached(self, node: PreparedNode, hit: CachedResult) -> None:
        self.values[node.node_id] = hit
        self.result.cached.append(node.node_id)
        if hit.ui is not None:
            self.result.ui_outputs[node.node_id] = hit.ui
            self.sink(NodeExecuted(self.result.prompt_id, node.node_id, node.node_type, hit.ui, cached=True))

    def _gather(self, node: PreparedNode) -> dict[str, list[Any]]:
        """Each input as a list of values (constants are one-element lists; unevaluated lazy inputs None)."""
        inputs: dict[str, list[Any]] = {name: [value] for name, value in node.constants.items()}
        requested = self.lazy_requested.get(node.node_id, set())
        for name, link in node.links.items():
            source = self.values.get(link.node_id)
            if source is None or (name in node.lazy_inputs and name not in requested):
                inputs[name] = [None]
            else:
                inputs[name] = source.outputs[link.output_index]
        return inputs

    def _execute(self, node: PreparedNode) -> None:
        self.interrupt.raise_if_set()
        definition = node.definition
        prompt_id = self.result.prompt_id
        self._running = node
        self.sink(NodeExecuting(prompt_id, node.node_id, node.node_type))
        inputs = self._gather(node)
        extra = self._hidden(node)
        context = self._context(node)
        if definition.wants_context:
            extra["context"] = context
        try:
            with node_running(context):
                outputs, ui = _call_mapped(definition, inputs, extra)
        except ExecutionInterrupted:
            raise  # `_running` stays set so the interrupted event can name this node
        except Exception as exc:
            self._running = None
            self._fail(node, exc, inputs)
            return
        self._running = None
        entry = CachedResult(outputs, ui, estimate_nbytes(outputs))
        self.values[node.node_id] = entry
        self.cache.put(self.keys[node.node_id], entry)
        self.result.executed.append(node.node_id)
        if ui is not None:
            self.result.ui_outputs[node.node_id] = ui
            self.sink(NodeExecuted(prompt_id, node.node_id, node.node_type, ui))

    def _context(self, node: PreparedNode) -> ExecutionContext:
        return ExecutionContext(
            prompt_id=self.result.prompt_id,
            node_id=node.node_id,
            node_type=node.node_type,
            sink=self.sink,
            interrupt=self.interrupt,
            services=self.executor.services,
        )

    def _hidden(self, node: PreparedNode) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for param, kind in node.definition.hidden.items():
            if kind == HIDDEN_UNIQUE_ID:
                extra[param] = node.node_id
            elif kind == HIDDEN_PROMPT:
                if self._api_prompt is None:
                    self._api_prompt = self.validated.workflow.to_api()
                extra[param] = self._api_prompt
            elif kind == HIDDEN_EXTRA_PNGINFO:
                extra[param] = self.extra_data.get("extra_pnginfo")
            else:
                extra[param] = None
        return extra

    def _fail(
        self, node: PreparedNode, exc: BaseException, inputs: dict[str, list[Any]] | None = None
    ) -> None:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        shown_inputs = {k: _describe(v) for k, v in (inputs or {}).items()}
        error = NodeExecutionError(node.node_id, node.node_type, exc, "".join(tb), shown_inputs)
        self.result.errors.append(error)
        self.result.skipped[node.node_id] = node.node_id
        self.sink(
            ExecutionFailed(
                self.result.prompt_id,
                node.node_id,
                node.node_type,
                str(exc),
                type(exc).__name__,
                tb,
                shown_inputs,
                list(self.result.executed),
            )
        )


def _call_mapped(
    definition: NodeDefinition, inputs: dict[str, list[Any]], extra: dict[str, Any]
) -> tuple[list[list[Any]], dict[str, Any] | None]:
    n_outputs = len(definition.outputs)
    outputs: list[list[Any]] = [[] for _ in range(n_outputs)]
    ui: dict[str, Any] | None = None
    if definition.input_is_list:
        calls = [{**inputs, **extra}]
    else:
        lengths = [len(v) for v in inputs.values()]
        if any(length == 0 for length in lengths):
            return outputs, None  # an empty list input: nothing to map over
        count = max(lengths, default=1)
        calls = [{name: v[min(i, len(v) - 1)] for name, v in inputs.items()} | extra for i in range(count)]
    for arguments in calls:
        values, call_ui = _normalize(definition, definition.function(**arguments))
        for index, value in enumerate(values[:n_outputs]):
            if definition.outputs[index].is_list:
                outputs[index].extend(value)
            else:
                outputs[index].append(value)
        if call_ui:
            ui = ui or {}
            for key, items in call_ui.items():
                if isinstance(items, list):
                    ui.setdefault(key, []).extend(items)
                else:
                    ui[key] = items
    return outputs, ui


def _normalize(definition: NodeDefinition, result: Any) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    ui = None
    if isinstance(result, NodeOutput):
        values, ui = result.values, result.ui
    elif isinstance(result, dict) and ("ui" in result or "result" in result):
        values, ui = tuple(result.get("result") or ()), result.get("ui")
    elif isinstance(result, tuple | list):
        values = tuple(result)
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
        if output.is_list and index < len(values) and not isinstance(values[index], list | tuple):
            raise TypeError(
                f"{definition.node_type} output {index} is declared as a list but got {type(values[index]).__name__}"
            )
    return values, ui


def _takes(function: Any, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _accepted(function: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """Only the arguments a hook accepts (hooks often take a subset of the inputs)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return arguments
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return arguments
    return {k: v for k, v in arguments.items() if k in params}


def _describe(values: list[Any]) -> Any:
    """A JSON-friendly summary of input values for error reports (tensors by shape, not content)."""
    shown: list[Any] = []
    for value in values[:4]:
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            shown.append(f"{type(value).__name__}{tuple(value.shape)} {value.dtype}")
        elif isinstance(value, str | int | float | bool) or value is None:
            shown.append(value)
        else:
            shown.append(type(value).__name__)
    return shown[0] if len(values) == 1 else shown
