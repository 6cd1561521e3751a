"""ExecutionBlocker: a blocked input stops the node and everything downstream (output nodes write nothing);
a blocker with a message is reported once, as ComfyUI reports it, and the run still succeeds."""

from __future__ import annotations

from collections import Counter

import pytest

from engine import api
from engine.execution import events as ev
from engine.execution.cache import OutputCache
from engine.execution.executor import Executor
from engine.execution.expansion import ExecutionBlocker
from engine.graph.api_format import parse_api_workflow
from engine.registry import NodeRegistry
from tests.unit.engine.event_sinks import CollectingSink


@pytest.fixture
def calls() -> Counter[str]:
    return Counter()


@pytest.fixture
def executor(calls: Counter[str]) -> Executor:
    @api.node(
        "BGate",
        inputs=[api.Int("value", 0, min=-100, max=100), api.Boolean("open", True), api.String("message", "")],
        outputs=["INT", "INT"],
    )
    def gate(value, open, message):
        """Output 0 passes the value when open, else a blocker; output 1 always passes it."""
        calls["BGate"] += 1
        return (value if open else ExecutionBlocker(message or None), value)

    @api.node(
        "BAdd",
        inputs=[api.Input("a", "INT", force_input=True), api.Int("b", 0, min=-100, max=100)],
        outputs=["INT"],
    )
    def add(a, b):
        calls["BAdd"] += 1
        return (a + b,)

    @api.node("BSave", inputs=[api.Input("value", "INT", force_input=True)], output_node=True)
    def save(value):
        calls["BSave"] += 1
        return api.NodeOutput(ui={"saved": [value]})

    @api.node("BList", outputs=[api.Output("INT", is_list=True)])
    def make_list():
        return ([1, ExecutionBlocker(None), 3],)

    @api.node(
        "BCollect",
        inputs=[api.Input("values", "INT", force_input=True)],
        input_is_list=True,
        output_node=True,
    )
    def collect(values):
        calls["BCollect"] += 1
        return api.NodeOutput(ui={"values": list(values)})

    registry = NodeRegistry()
    for definition in (gate, add, save, make_list, collect):
        registry.register(definition)
    return Executor(registry, OutputCache())


def gated(open: bool, message: str = "") -> dict:
    return {
        "1": {"class_type": "BGate", "inputs": {"value": 5, "open": open, "message": message}},
        "2": {"class_type": "BAdd", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "BSave", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "BSave", "inputs": {"value": ["1", 1]}},
    }


def test_a_silent_blocker_stops_downstream_and_the_output_node_writes_nothing(executor, calls):
    sink = CollectingSink()
    result = executor.run(parse_api_workflow(gated(open=False)), sink=sink)
    assert result.ok and result.errors == []
    assert calls["BAdd"] == 0 and calls["BSave"] == 1  # only the unblocked branch saved
    assert "3" not in result.ui_outputs and result.ui_outputs["4"] == {"saved": [5]}
    assert result.blocked == {"2": None, "3": None}
    assert sink.of_type(ev.ExecutionFailed) == []
    assert isinstance(result.output("2"), ExecutionBlocker)


def test_open_gate_runs_everything(executor, calls):
    result = executor.run(parse_api_workflow(gated(open=True)))
    assert result.ok and result.blocked == {}
    assert result.ui_outputs["3"] == {"saved": [6]}


def test_a_message_is_reported_once_at_the_first_blocked_node(executor, calls):
    sink = CollectingSink()
    result = executor.run(parse_api_workflow(gated(open=False, message="no face found")), sink=sink)
    failures = sink.of_type(ev.ExecutionFailed)
    assert [(f.node_id, f.exception_type, f.exception_message) for f in failures] == [
        ("2", "ExecutionBlocked", "Execution Blocked: no face found")
    ]
    assert failures[0].traceback == []
    assert result.status == "success"  # as in ComfyUI: the prompt itself still succeeds
    assert result.blocked == {"2": "no face found", "3": None}
    assert calls["BSave"] == 1


def test_blocked_outputs_are_cached_and_still_block_on_a_rerun(executor, calls):
    executor.run(parse_api_workflow(gated(open=False)))
    calls.clear()
    # a new consumer of the cached blocked node: the blocker comes from the cache and stops it too
    graph = gated(open=False)
    graph["5"] = {"class_type": "BAdd", "inputs": {"a": ["2", 0], "b": 7}}
    graph["6"] = {"class_type": "BSave", "inputs": {"value": ["5", 0]}}
    result = executor.run(parse_api_workflow(graph))
    assert result.ok and calls["BAdd"] == 0 and calls["BSave"] == 0
    assert "6" not in result.ui_outputs and set(result.blocked) == {"5", "6"}


def test_a_list_node_receives_blockers_in_its_list_and_is_stopped(executor, calls):
    graph = {
        "1": {"class_type": "BList", "inputs": {}},
        "2": {"class_type": "BCollect", "inputs": {"values": ["1", 0]}},
    }
    result = executor.run(parse_api_workflow(graph))
    assert result.ok and calls["BCollect"] == 0 and "2" not in result.ui_outputs


def test_per_element_calls_are_blocked_one_by_one(executor, calls):
    graph = {
        "1": {"class_type": "BList", "inputs": {}},
        "2": {"class_type": "BAdd", "inputs": {"a": ["1", 0], "b": 10}},
        "3": {"class_type": "BSave", "inputs": {"value": ["2", 0]}},
    }
    result = executor.run(parse_api_workflow(graph))
    assert result.ok
    assert calls["BAdd"] == 2  # elements 1 and 3; the blocked element's call is not made
    assert result.ui_outputs["3"] == {"saved": [11, 13]}
    values = result.output_list("2")
    assert values[0] == 11 and isinstance(values[1], ExecutionBlocker) and values[2] == 13
