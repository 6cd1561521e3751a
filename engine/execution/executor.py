"""The executor: runs what the targets need, in dependency order, reusing cached results by content.

List semantics (ComfyUI's): every output is held as a list of values. A node whose `input_is_list` is
false is called once per element, inputs broadcast to the longest list (shorter lists repeat their last
element); outputs declared `is_list` are concatenated across calls, the others collected one per call.

Lazy inputs: a lazy input's source runs only when the node's `check_lazy` hook asks for it. The hook is
called with the values available so far (None for lazy inputs not yet evaluated) and returns the names
it still needs; it is called again after those have run, until it asks for nothing new.

A failing node stops the nodes that depend on it; independent branches still run, and the result
reports the failure with the node id, type, message and traceback.

Expansion and blockers (ComfyUI's dynamic execution, engine/execution/expansion.py): a node returning
`{"result": ..., "expand": graph}` has the graph's nodes added to the run and executed, and receives the
outputs its result links to; an ExecutionBlocker reaching a node's input stops that call, and the node's
outputs become blockers, so nothing downstream runs.
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
)
from engine.errors import ExecutionInterrupted, NodeExecutionError
from engine.execution.cache import CachedResult, OutputCache, content_key, estimate_nbytes, static_key_part
from engine.execution.calling import blocker_in, call_mapped
from engine.execution.context import ExecutionContext, InterruptFlag, enter_node, leave_node
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
    expansion_lineage,
)
from engine.execution.expansion import (
    BLOCKED_EXCEPTION_TYPE,
    HIDDEN_DYNPROMPT,
    DynamicPrompt,
    ExecutionBlocker,
    ExpansionError,
    PendingExpansion,
    blocked_message,
    is_link,
    plain_constants,
    prepare_expansion,
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
    # node id -> message of the ExecutionBlocker that stopped it (None: blocked silently)
    blocked: dict[str, str | None] = field(default_factory=dict)
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
        self.expansions: dict[str, PendingExpansion] = {}  # expanded nodes waiting for their subgraph
        self.blocked_ids: set[str] = set()  # nodes whose outputs hold an ExecutionBlocker
        self._dynamic_prompt: DynamicPrompt | None = None  # made when a node asks for DYNPROMPT
        self.expanded_from: dict[str, tuple[str, dict[str, Any]]] = {}  # added node -> (parent, its entry)

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
            self.keys[node_id] = self._key(node, prefix, links)

    def _key(self, node: PreparedNode, prefix: bytes, links: list[tuple[str, str, int]]) -> bytes:
        fingerprint = self._fingerprint(node) if node.definition.fingerprint is not None else None
        if isinstance(fingerprint, float) and math.isnan(fingerprint):
            fingerprint = ("always-changed", os.urandom(8).hex())
        keys = self.keys
        return content_key(
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
            elif self.expansions and node_id in self.expansions:
                self._continue_expansion(node, stack)
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
            if not (self.expansions and node_id in self.expansions):
                stack.pop()  # an expanded node stays, to take its outputs once its subgraph ran

    def _continue_expansion(self, node: PreparedNode, stack: list[str]) -> None:
        pending = self.expansions[node.node_id]
        waiting = [n for n in pending.waits_for if n not in self.values]
        failed = [n for n in waiting if n in self.result.skipped]
        if failed:
            del self.expansions[node.node_id]
            self.result.skipped[node.node_id] = self.result.skipped[failed[0]]
            stack.pop()
        elif waiting:
            stack.extend(waiting)
        else:
            del self.expansions[node.node_id]
            stack.pop()
            try:
                outputs, blocked = self._expanded_outputs(node, pending)
            except Exception as exc:
                self._fail(node, exc)
                return
            self._store(node, outputs, pending.ui, blocked, announce=False)

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
        if hook is None:
            return False  # as ComfyUI: without a check_lazy_status, lazy inputs are never evaluated
        gathered = self._gather(node)
        available: dict[str, Any] = (
            dict(gathered)
            if node.definition.input_is_list
            else {k: v[0] if v else None for k, v in gathered.items()}
        )
        if self._takes_blocked(node) and blocker_in(available, node.definition.input_is_list):
            return False  # a blocked call asks for nothing (ComfyUI skips the hook as it skips the call)
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
        if hit.blocked:
            self.blocked_ids.add(node.node_id)
        self.result.cached.append(node.node_id)
        if hit.ui is not None:
            self.result.ui_outputs[node.node_id] = hit.ui
            lineage = expansion_lineage(self.expanded_from, node.node_id)
            self.sink(
                NodeExecuted(self.result.prompt_id, node.node_id, node.node_type, hit.ui, True, **lineage)
            )

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
        lineage = expansion_lineage(self.expanded_from, node.node_id)
        self.sink(NodeExecuting(prompt_id, node.node_id, node.node_type, **lineage))
        inputs = self._gather(node)
        extra = self._hidden(node)
        context = self._context(node)
        if definition.wants_context:
            extra["context"] = context
        check_blocked = self._takes_blocked(node)
        token = enter_node(context)
        try:
            outputs, ui, calls, blocked, stopped_by = call_mapped(definition, inputs, extra, check_blocked)
        except ExecutionInterrupted:
            raise  # `_running` stays set so the interrupted event can name this node
        except Exception as exc:
            self._running = None
            self._fail(node, exc, inputs)
            return
        finally:
            leave_node(token)
        self._running = None
        if stopped_by:
            self._report_blocked(node, stopped_by)
        if calls is None:
            self._store(node, outputs, ui, blocked)
            return
        try:
            self._expand(node, calls, ui)
        except Exception as exc:
            self._fail(node, exc, inputs)

    def _takes_blocked(self, node: PreparedNode) -> bool:
        """Whether an input of the node comes from a node whose outputs hold a blocker (cheap when none do)."""
        blocked = self.blocked_ids
        return bool(blocked) and any(link.node_id in blocked for link in node.links.values())

    def _store(
        self,
        node: PreparedNode,
        outputs: list[list[Any]],
        ui: dict[str, Any] | None,
        blocked: bool,
        announce: bool = True,
    ) -> None:
        entry = CachedResult(outputs, ui, estimate_nbytes(outputs), blocked)
        self.values[node.node_id] = entry
        self.cache.put(self.keys[node.node_id], entry)
        self.result.executed.append(node.node_id)
        if blocked:
            self.blocked_ids.add(node.node_id)
        if ui is not None:
            self.result.ui_outputs[node.node_id] = ui
            if announce:
                lineage = expansion_lineage(self.expanded_from, node.node_id)
                self.sink(NodeExecuted(self.result.prompt_id, node.node_id, node.node_type, ui, **lineage))

    def _report_blocked(self, node: PreparedNode, stopped_by: list[ExecutionBlocker]) -> None:
        """Record that blockers stopped the node; one with a message is reported as ComfyUI reports it (an
        execution_error naming this node, with no traceback), and the run goes on."""
        messages = [b.message for b in stopped_by if b.message is not None]
        self.result.blocked[node.node_id] = messages[0] if messages else None
        for message in messages:
            self.sink(
                ExecutionFailed(
                    self.result.prompt_id,
                    node.node_id,
                    node.node_type,
                    blocked_message(message),
                    BLOCKED_EXCEPTION_TYPE,
                    [],
                    {},
                    list(self.result.executed),
                )
            )

    # -- expansion ------------------------------------------------------------------------------

    def _expand(self, node: PreparedNode, calls: list[tuple[Any, tuple[Any, ...]]], ui: Any) -> None:
        """Add the subgraphs the node's calls returned to the run; the node waits for what its results link
        to and for the subgraphs' output nodes (ComfyUI runs those too)."""
        graph: dict[str, Any] = {}
        for call_graph, _ in calls:
            for node_id in call_graph or {}:
                if str(node_id) in graph:
                    raise ExpansionError(f"Attempt to add duplicate node {node_id}.")
            graph.update({str(k): v for k, v in (call_graph or {}).items()})
        prepared, order = prepare_expansion(graph, self.executor.registry, self.nodes)
        if any(link.node_id == node.node_id for added in prepared.values() for link in added.links.values()):
            # it would wait for its own outputs (ComfyUI reports such a graph as a dependency cycle)
            raise ExpansionError(f"the expansion of node {node.node_id} links to that node's own outputs")
        waits = [node_id for node_id in order if prepared[node_id].definition.output_node]
        for call_graph, values in calls:
            for value in values if call_graph is not None else ():
                if is_link(value):
                    if value[0] == node.node_id or (value[0] not in prepared and value[0] not in self.nodes):
                        raise ExpansionError(
                            f"the expansion result links to node {value[0]!r}, which does not exist"
                        )
                    waits.append(value[0])
        if self.nodes is self.validated.nodes:
            self.nodes = dict(self.nodes)  # the validated workflow is reused by re-runs: never grow it
        self.nodes.update(prepared)
        for node_id in order:
            self.expanded_from[node_id] = (node.node_id, graph[node_id])
            if self._dynamic_prompt is not None:
                display = graph[node_id].get("override_display_id", node.node_id)
                self._dynamic_prompt.add_ephemeral_node(node_id, graph[node_id], node.node_id, display)
        for node_id in order:
            self.keys[node_id] = self._expanded_key(prepared[node_id])
        self.expansions[node.node_id] = PendingExpansion(calls, ui, list(dict.fromkeys(waits)))
        if ui is not None:
            self.result.ui_outputs[node.node_id] = ui
            lineage = expansion_lineage(self.expanded_from, node.node_id)
            self.sink(NodeExecuted(self.result.prompt_id, node.node_id, node.node_type, ui, **lineage))

    def _expanded_key(self, node: PreparedNode) -> bytes:
        definition = node.definition
        unique = node.node_id if HIDDEN_UNIQUE_ID in definition.hidden.values() else None
        if plain_constants(node.constants):
            prefix = static_key_part(definition.node_type, definition.version, node.constants, unique)
        else:  # a value whose repr does not identify it: usable in this run only
            prefix = static_key_part(definition.node_type, definition.version, {}, os.urandom(8).hex())
        links = sorted((name, link.node_id, link.output_index) for name, link in node.links.items())
        return self._key(node, prefix, links)

    def _expanded_outputs(
        self, node: PreparedNode, pending: PendingExpansion
    ) -> tuple[list[list[Any]], bool]:
        """The expanding node's outputs: per call, a linked value is the linked output's values, any other
        value is taken as a node's own result value would be."""
        declared = node.definition.outputs
        outputs: list[list[Any]] = [[] for _ in declared]
        blocked = False
        for call_graph, values in pending.calls:
            for index, output in enumerate(declared):
                value: Any = values[index] if index < len(values) else None
                if call_graph is not None and is_link(value):
                    source = self.values[value[0]]
                    outputs[index].extend(source.outputs[int(value[1])])
                    blocked = blocked or source.blocked
                elif output.is_list and isinstance(value, list | tuple):
                    outputs[index].extend(value)
                    blocked = blocked or any(isinstance(v, ExecutionBlocker) for v in value)
                else:
                    outputs[index].append(value)
                    blocked = blocked or isinstance(value, ExecutionBlocker)
        return outputs, blocked

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
            elif kind == HIDDEN_DYNPROMPT:
                extra[param] = self._dynprompt()
            else:
                extra[param] = None
        return extra

    def _dynprompt(self) -> DynamicPrompt:
        if self._dynamic_prompt is None:
            if self._api_prompt is None:
                self._api_prompt = self.validated.workflow.to_api()
            self._dynamic_prompt = DynamicPrompt(self._api_prompt)
            for node_id, (parent, info) in self.expanded_from.items():  # expansions before anyone asked
                display = info.get("override_display_id", parent)
                self._dynamic_prompt.add_ephemeral_node(node_id, info, parent, display)
        return self._dynamic_prompt

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
