"""Executor: partial execution, the content-keyed cache, lazy inputs, lists, interrupt, failures."""

from __future__ import annotations

import threading

from engine.execution import events as ev
from engine.execution.cache import CachedResult, OutputCache
from engine.execution.context import InterruptFlag
from engine.execution.executor import Executor
from engine.graph.api_format import parse_api_workflow
from tests.unit.engine.event_sinks import CollectingSink


def wf(prompt):
    return parse_api_workflow(prompt)


def seed_graph(seed: int = 1) -> dict:
    return {
        "1": {"class_type": "Const", "inputs": {"value": 2}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 3}},
        "3": {"class_type": "Seeded", "inputs": {"a": ["2", 0], "seed": seed}},
        "4": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": 1}},
        "5": {"class_type": "Sink", "inputs": {"value": ["4", 0]}},
    }


def test_runs_in_dependency_order_and_reports_ui(executor, world):
    sink = CollectingSink()
    result = executor.run(wf(seed_graph(7)), sink=sink)
    assert result.ok
    assert result.executed == ["1", "2", "3", "4", "5"]
    assert result.ui_outputs == {"5": {"values": [5 * 1000 + 7 + 1]}}
    kinds = [type(e).__name__ for e in sink.events]
    assert kinds[0] == "ExecutionStarted" and kinds[-1] == "ExecutionFinished"
    assert [e.node_id for e in sink.of_type(ev.NodeExecuting)] == ["1", "2", "3", "4", "5"]
    assert sink.of_type(ev.NodeExecuted)[0].output == {"values": [5008]}


def test_unchanged_rerun_executes_nothing(executor, world):
    executor.run(wf(seed_graph()))
    world.calls.clear()
    sink = CollectingSink()
    result = executor.run(wf(seed_graph()), sink=sink)
    assert result.executed == []
    assert sum(world.calls.values()) == 0
    assert result.ui_outputs == {"5": {"values": [5002]}}  # cached output node still reports its UI data
    assert set(sink.of_type(ev.ExecutionCached)[0].nodes) == {"1", "2", "3", "4", "5"}


def test_seed_change_reruns_only_downstream(executor, world):
    executor.run(wf(seed_graph(1)))
    world.calls.clear()
    result = executor.run(wf(seed_graph(2)))
    assert result.executed == ["3", "4", "5"]
    assert world.calls["Const"] == 0
    assert result.ui_outputs["5"] == {"values": [5000 + 2 + 1]}


def test_same_subgraph_under_other_ids_hits_the_cache(executor, world):
    executor.run(wf(seed_graph()))
    world.calls.clear()
    renamed = {
        "a": {"class_type": "Const", "inputs": {"value": 2}},
        "b": {"class_type": "Add", "inputs": {"a": ["a", 0], "b": 3}},
        "c": {"class_type": "Scale", "inputs": {"a": ["b", 0], "factor": 2.0}},
        "d": {"class_type": "FloatSink", "inputs": {"value": ["c", 0]}},
    }
    result = executor.run(wf(renamed))
    assert result.executed == ["c", "d"]  # a and b were computed by the other workflow
    assert world.calls["Const"] == 0 and world.calls["Add"] == 0
    assert result.ui_outputs["d"] == {"values": [10.0]}


def test_partial_execution_runs_only_what_targets_need(executor, world):
    prompt = seed_graph()
    prompt["6"] = {"class_type": "Const", "inputs": {"value": 9}}
    prompt["7"] = {"class_type": "Sink", "inputs": {"value": ["6", 0]}}
    result = executor.run(wf(prompt), targets=["7"])
    assert result.executed == ["6", "7"]
    assert world.calls["Seeded"] == 0


def test_fingerprint_change_reruns_node(executor, world):
    prompt = {
        "1": {"class_type": "ReadExternal", "inputs": {"name": "f"}},
        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
    }
    executor.run(wf(prompt))
    assert executor.run(wf(prompt)).executed == []
    world.external = "changed"
    assert executor.run(wf(prompt)).executed == ["1", "2"]


def test_lazy_inputs_evaluate_only_the_needed_branch(executor, world):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 10}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {
            "class_type": "Fail",
            "inputs": {"value": ["1", 0]},
        },  # only reached if the false branch is needed
        "4": {
            "class_type": "Switch",
            "inputs": {"condition": True, "on_true": ["2", 0], "on_false": ["3", 0]},
        },
        "5": {"class_type": "Sink", "inputs": {"value": ["4", 0]}},
    }
    result = executor.run(wf(prompt))
    assert result.ok, result.errors
    assert result.ui_outputs["5"] == {"values": [11]}
    assert world.calls["Fail"] == 0
    prompt["4"]["inputs"]["condition"] = False
    result = executor.run(wf(prompt))
    assert world.calls["Fail"] == 1 and not result.ok


def test_list_outputs_map_over_consumers_and_input_is_list_gets_all(executor, world):
    prompt = {
        "1": {"class_type": "Range", "inputs": {"count": 4}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10}},  # called once per element
        "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "ListSum", "inputs": {"values": ["2", 0]}},  # gets the whole list
        "5": {"class_type": "Sink", "inputs": {"value": ["4", 0]}},
    }
    result = executor.run(wf(prompt))
    assert world.calls["Add"] == 4
    assert result.output_list("2") == [10, 11, 12, 13]
    assert result.ui_outputs["3"] == {"values": [10, 11, 12, 13]}
    assert result.ui_outputs["5"] == {"values": [46]}
    assert world.calls["ListSum"] == 1


def test_failing_node_stops_dependents_keeps_finished_and_independent(executor, world):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 3}},
        "2": {"class_type": "Fail", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
        "4": {"class_type": "Sink", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
    }
    sink = CollectingSink()
    result = executor.run(wf(prompt), sink=sink)
    assert result.status == "error"
    assert "1" in result.executed and "5" in result.executed  # independent branch completed
    assert "3" not in result.executed and "4" not in result.executed
    assert result.skipped["4"] == "2"
    error = result.errors[0]
    assert (error.node_id, error.node_type) == ("2", "Fail")
    assert "boom at 3" in str(error) and "RuntimeError" in error.traceback_text
    failed = sink.of_type(ev.ExecutionFailed)[0]
    assert failed.node_id == "2" and failed.exception_type == "RuntimeError"
    assert failed.current_inputs == {"value": 3}
    # The finished node stays cached: fixing nothing and re-running does not redo node 1.
    world.calls.clear()
    executor.run(wf(prompt))
    assert world.calls["Const"] == 0


def test_interrupt_between_nodes(executor, world):
    flag = InterruptFlag()
    flag.set()
    sink = CollectingSink()
    result = executor.run(wf(seed_graph()), interrupt=flag, sink=sink)
    assert result.status == "interrupted"
    assert result.executed == []
    assert sink.of_type(ev.ExecutionInterruptedEvent)


def test_interrupt_from_inside_a_long_node(executor, world):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 1}},
        "2": {"class_type": "Slow", "inputs": {"a": ["1", 0], "steps": 5000}},
        "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
    }
    flag = InterruptFlag()
    sink = CollectingSink()
    timer = threading.Thread(target=lambda: (world.progress_started.wait(5), flag.set()))
    timer.start()
    result = executor.run(wf(prompt), interrupt=flag, sink=sink)
    timer.join()
    assert result.status == "interrupted"
    progress = sink.of_type(ev.NodeProgress)
    assert progress and progress[-1].max == 5000 and progress[-1].value < 5000
    interrupted = sink.of_type(ev.ExecutionInterruptedEvent)[0]
    assert interrupted.node_id == "2" and interrupted.node_type == "Slow"
    assert "3" not in result.executed


def test_cache_is_lru_bounded_by_entries_and_bytes():
    cache = OutputCache(max_entries=2, max_bytes=None)
    for key in (b"a", b"b"):
        cache.put(key, CachedResult([[1]], None))
    cache.get(b"a")  # a is now most recently used
    cache.put(b"c", CachedResult([[1]], None))
    assert b"a" in cache and b"c" in cache and b"b" not in cache

    sized = OutputCache(max_entries=100, max_bytes=100)
    sized.put(b"x", CachedResult([[0]], None, nbytes=60))
    sized.put(b"y", CachedResult([[0]], None, nbytes=60))
    assert b"x" not in sized and b"y" in sized and sized.total_bytes == 60


def test_bounded_cache_reexecutes_evicted_nodes(registry, world):
    executor = Executor(registry, OutputCache(max_entries=2))
    executor.run(wf(seed_graph(1)))
    assert len(executor.cache) == 2  # only the last two results (nodes 4 and 5) survived
    result = executor.run(wf(seed_graph(2)))
    # With an unbounded cache only 3, 4, 5 would run; here 1 and 2 were evicted and run again.
    assert result.executed == ["1", "2", "3", "4", "5"]
    assert result.ui_outputs["5"] == {"values": [5003]}
