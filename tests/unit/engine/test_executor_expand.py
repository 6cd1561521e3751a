"""Node expansion in the executor: a node returning {"result": ..., "expand": graph} gets its subgraph run
and takes the linked outputs as its own (ComfyUI's execution model), cached sensibly across runs."""

from __future__ import annotations

from collections import Counter

import pytest

from engine import api
from engine.execution import events as ev
from engine.execution.cache import OutputCache
from engine.execution.executor import Executor
from engine.graph.api_format import parse_api_workflow
from engine.registry import NodeRegistry
from tests.unit.engine.event_sinks import CollectingSink


class World:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seen: list[int] = []


def _definitions(world: World) -> list[api.NodeDefinition]:
    @api.node("XConst", inputs=[api.Int("value", 0, min=-1000, max=1000)], outputs=["INT"])
    def const(value):
        world.calls["XConst"] += 1
        return (value,)

    @api.node(
        "XAdd",
        inputs=[api.Input("a", "INT", force_input=True), api.Int("b", 0, min=-1000, max=1000)],
        outputs=["INT"],
    )
    def add(a, b):
        world.calls["XAdd"] += 1
        return (a + b,)

    @api.node(
        "XQuadruple",
        inputs=[api.Input("x", "INT", force_input=True), api.String("tag", "q")],
        outputs=["INT", "STRING"],
        hidden={"unique_id": api.HIDDEN_UNIQUE_ID},
    )
    def quadruple(x, tag, unique_id):
        """Expands into two chained adders: x + x, then (x + x) + (x + x) = 4x; the second output is a value."""
        world.calls["XQuadruple"] += 1
        prefix = f"{unique_id}.0.0."
        graph = {
            prefix + "1": {"class_type": "XAdd", "inputs": {"a": x, "b": x}},
            prefix + "2": {"class_type": "XDouble", "inputs": {"a": [prefix + "1", 0]}},
        }
        return {"result": ([prefix + "2", 0], tag), "expand": graph}

    @api.node("XDouble", inputs=[api.Input("a", "INT", force_input=True)], outputs=["INT"])
    def double(a):
        world.calls["XDouble"] += 1
        return (a * 2,)

    @api.node("XSink", inputs=[api.Input("value", "INT", force_input=True)], output_node=True)
    def sink(value):
        world.calls["XSink"] += 1
        world.seen.append(value)
        return api.NodeOutput(ui={"values": [value]})

    @api.node("XTextSink", inputs=[api.Input("text", "STRING", force_input=True)], output_node=True)
    def text_sink(text):
        return api.NodeOutput(ui={"texts": [text]})

    @api.node(
        "XWithPreview",
        inputs=[api.Input("x", "INT", force_input=True)],
        outputs=["INT"],
        hidden={"unique_id": api.HIDDEN_UNIQUE_ID},
    )
    def with_preview(x, unique_id):
        """Its subgraph holds an output node the result does not link to: it runs all the same."""
        graph = {f"{unique_id}.p": {"class_type": "XSink", "inputs": {"value": x + 100}}}
        return {"result": (x,), "expand": graph}

    @api.node(
        "XClash",
        inputs=[api.Input("x", "INT", force_input=True)],
        outputs=["INT"],
    )
    def clash(x):
        return {"result": (["1", 0],), "expand": {"1": {"class_type": "XConst", "inputs": {"value": 1}}}}

    @api.node(
        "XSelfish",
        inputs=[api.Input("x", "INT", force_input=True)],
        outputs=["INT"],
        hidden={"unique_id": api.HIDDEN_UNIQUE_ID},
    )
    def selfish(x, unique_id):
        graph = {f"{unique_id}.s": {"class_type": "XDouble", "inputs": {"a": [unique_id, 0]}}}
        return {"result": ([f"{unique_id}.s", 0],), "expand": graph}

    return [const, add, quadruple, double, sink, text_sink, with_preview, clash, selfish]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def executor(world: World) -> Executor:
    registry = NodeRegistry()
    for definition in _definitions(world):
        registry.register(definition)
    return Executor(registry, OutputCache())


def prompt(value: int = 3, tag: str = "q", sink_bias: int = 0) -> dict:
    return {
        "1": {"class_type": "XConst", "inputs": {"value": value}},
        "2": {"class_type": "XQuadruple", "inputs": {"x": ["1", 0], "tag": tag}},
        "3": {"class_type": "XAdd", "inputs": {"a": ["2", 0], "b": sink_bias}},
        "4": {"class_type": "XSink", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "XTextSink", "inputs": {"text": ["2", 1]}},
    }


def test_expanded_subgraph_runs_and_feeds_downstream(executor, world):
    sink = CollectingSink()
    result = executor.run(parse_api_workflow(prompt(3)), sink=sink)
    assert result.ok, result.errors
    assert world.seen == [12]
    assert result.ui_outputs["5"] == {"texts": ["q"]}  # a plain value in the result passes through
    # the subgraph's nodes ran under their prefixed ids, before the expanding node completed
    assert result.executed.index("2.0.0.1") < result.executed.index("2.0.0.2") < result.executed.index("2")
    assert result.output("2.0.0.2") == 12 and result.output("2") == 12
    running = [e.node_id for e in sink.of_type(ev.NodeExecuting)]
    assert running.count("2") == 1 and "2.0.0.1" in running


def test_subgraph_output_nodes_run_even_unlinked(executor, world):
    graph = {
        "1": {"class_type": "XConst", "inputs": {"value": 5}},
        "2": {"class_type": "XWithPreview", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "XSink", "inputs": {"value": ["2", 0]}},
    }
    result = executor.run(parse_api_workflow(graph))
    assert result.ok, result.errors
    assert sorted(world.seen) == [5, 105]
    assert result.ui_outputs["2.p"] == {"values": [105]}


def test_duplicate_expanded_id_fails_the_expanding_node(executor, world):
    graph = {
        "1": {"class_type": "XConst", "inputs": {"value": 5}},
        "2": {"class_type": "XClash", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "XSink", "inputs": {"value": ["2", 0]}},
    }
    result = executor.run(parse_api_workflow(graph))
    assert not result.ok
    assert result.errors[0].node_id == "2"
    assert "Attempt to add duplicate node 1" in str(result.errors[0])
    assert result.skipped["3"] == "2"


def test_a_subgraph_linking_to_its_own_expanding_node_fails_instead_of_waiting_forever(executor, world):
    graph = {
        "1": {"class_type": "XConst", "inputs": {"value": 5}},
        "2": {"class_type": "XSelfish", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "XSink", "inputs": {"value": ["2", 0]}},
    }
    result = executor.run(parse_api_workflow(graph))
    assert not result.ok and result.errors[0].node_id == "2"
    assert "own outputs" in str(result.errors[0])


def test_cached_rerun_does_not_expand_again(executor, world):
    executor.run(parse_api_workflow(prompt(3)))
    world.calls.clear()
    result = executor.run(parse_api_workflow(prompt(3)))
    assert result.ok and result.executed == []
    assert result.ui_outputs["4"] == {"values": [12]}
    # downstream change only: the expanding node is a cache hit, so its subgraph is not re-created
    result = executor.run(parse_api_workflow(prompt(3, sink_bias=1)))
    assert result.ok and world.calls["XQuadruple"] == 0 and world.calls["XDouble"] == 0
    assert world.seen[-1] == 13


def test_re_expansion_reuses_unchanged_subgraph_nodes(executor, world):
    executor.run(parse_api_workflow(prompt(3, tag="a")))
    world.calls.clear()
    # only the pass-through value changes: the node expands again, its identical subgraph is all cached
    result = executor.run(parse_api_workflow(prompt(3, tag="b")))
    assert result.ok, result.errors
    assert world.calls["XQuadruple"] == 1
    assert world.calls["XDouble"] == 0
    assert world.calls["XAdd"] == 1 and "3" in result.executed  # node 3 only: its source's key changed
    assert "2.0.0.2" in result.cached  # the subgraph's end is a hit, so nothing before it is even visited
    assert result.ui_outputs["5"] == {"texts": ["b"]}
    # a different input reaches the subgraph: it runs again
    result = executor.run(parse_api_workflow(prompt(4, tag="b")))
    assert result.ok and world.seen[-1] == 16


def test_validated_workflow_is_not_grown_by_expansion(executor, world):
    """Re-running one validated workflow (the server does) expands afresh each time without clashes."""
    from engine.graph.validate import validate_workflow

    validated = validate_workflow(parse_api_workflow(prompt(3)), executor.registry)
    first = executor.execute(validated)
    executor.cache.clear()
    second = executor.execute(validated)
    assert first.ok and second.ok, second.errors
    assert set(validated.nodes) == {"1", "2", "3", "4", "5"}
    assert world.seen == [12, 12]


def test_mapped_calls_expand_one_subgraph_each(world):
    """A node called once per list element returns one expansion per call; its outputs are in call order."""

    @api.node("XList", outputs=[api.Output("INT", is_list=True)])
    def make_list():
        return ([1, 2, 3],)

    @api.node(
        "XTimesTen",
        inputs=[api.Input("x", "INT", force_input=True)],
        outputs=["INT"],
        hidden={"unique_id": api.HIDDEN_UNIQUE_ID},
    )
    def times_ten(x, unique_id):
        node_id = f"{unique_id}.{x}"
        return {
            "result": ([node_id, 0],),
            "expand": {node_id: {"class_type": "XAdd", "inputs": {"a": x, "b": 9 * x}}},
        }

    @api.node(
        "XCollect",
        inputs=[api.Input("values", "INT", force_input=True)],
        input_is_list=True,
        output_node=True,
    )
    def collect(values):
        return api.NodeOutput(ui={"values": list(values)})

    registry = NodeRegistry()
    for definition in [*_definitions(world), make_list, times_ten, collect]:
        registry.register(definition)
    graph = {
        "1": {"class_type": "XList", "inputs": {}},
        "2": {"class_type": "XTimesTen", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "XCollect", "inputs": {"values": ["2", 0]}},
    }
    result = Executor(registry).run(parse_api_workflow(graph))
    assert result.ok, result.errors
    assert result.ui_outputs["3"] == {"values": [10, 20, 30]}
