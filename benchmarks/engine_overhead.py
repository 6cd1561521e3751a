"""Engine overhead on a 500-node graph of trivial nodes.

Prints validate time, first execution, fully cached re-run, and re-run after changing one widget at the
root (every node downstream re-executes). The reference in the same run is the bare cost of calling the
same 500 node functions directly in dependency order, so `engine / direct` is the engine's overhead.

Targets (issue 2): < 0.1 ms engine overhead per executed node; fully cached re-run < 10 ms.

    .venv/bin/python benchmarks/engine_overhead.py [--nodes 500] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from engine import api
from engine.execution.cache import OutputCache
from engine.execution.executor import Executor
from engine.graph.api_format import parse_api_workflow
from engine.graph.validate import validate_workflow
from engine.registry import NodeRegistry


@api.node("BenchConst", inputs=[api.Int("value", 0, min=-(10**9), max=10**9)], outputs=["INT"])
def bench_const(value):
    return (value,)


@api.node(
    "BenchAdd",
    inputs=[
        api.Input("a", "INT", force_input=True),
        api.Input("b", "INT", force_input=True),
        api.Int("k", 1),
    ],
    outputs=["INT"],
)
def bench_add(a, b, k):
    return (a + b + k,)


@api.node("BenchSink", inputs=[api.Input("value", "INT", force_input=True)], output_node=True)
def bench_sink(value):
    return api.NodeOutput(ui={"value": [value]})


def build_prompt(n_nodes: int, root_value: int = 1) -> dict:
    """A DAG: one root constant, a spine where node i reads node i-1 and node i//2, a sink at the end."""
    prompt: dict = {"0": {"class_type": "BenchConst", "inputs": {"value": root_value}}}
    for i in range(1, n_nodes - 1):
        prompt[str(i)] = {
            "class_type": "BenchAdd",
            "inputs": {"a": [str(i - 1), 0], "b": [str(i // 2), 0], "k": i % 7},
        }
    prompt[str(n_nodes - 1)] = {"class_type": "BenchSink", "inputs": {"value": [str(n_nodes - 2), 0]}}
    return prompt


def direct_reference(prompt: dict) -> float:
    """Call the node functions directly in order: the floor any engine has to pay."""
    values: dict[str, int] = {}
    started = time.perf_counter()
    for node_id, node in prompt.items():  # ids are already in dependency order
        inputs = node["inputs"]
        if node["class_type"] == "BenchConst":
            values[node_id] = bench_const(inputs["value"])[0]
        elif node["class_type"] == "BenchAdd":
            values[node_id] = bench_add(values[inputs["a"][0]], values[inputs["b"][0]], inputs["k"])[0]
        else:
            bench_sink(values[inputs["value"][0]])
    return time.perf_counter() - started


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def run_document(executor: Executor, prompt: dict) -> Any:
    return executor.run(parse_api_workflow(prompt))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    registry = NodeRegistry()
    for definition in (bench_const, bench_add, bench_sink):
        registry.register(definition)
    prompt = build_prompt(args.nodes)

    validate_s, first_s, cached_s, cached_total_s, widget_s, direct_s = [], [], [], [], [], []
    for repeat in range(args.repeats):
        executor = Executor(registry, OutputCache(max_entries=10 * args.nodes))

        seconds, validated = timed(lambda p: validate_workflow(parse_api_workflow(p), registry), prompt)
        validate_s.append(seconds)
        seconds, result = timed(executor.execute, validated)
        assert len(result.executed) == args.nodes, "first run must execute every node"
        first_s.append(seconds)
        seconds, result = timed(executor.execute, validated)
        assert result.executed == [], "unchanged re-run must execute nothing"
        cached_s.append(seconds)
        seconds, result = timed(run_document, executor, prompt)
        assert result.executed == []
        cached_total_s.append(seconds)
        changed = build_prompt(args.nodes, root_value=2 + repeat)
        seconds, result = timed(run_document, executor, changed)
        assert len(result.executed) == args.nodes, "changing the root re-runs everything downstream"
        widget_s.append(seconds)
        direct_s.append(direct_reference(prompt))

    n = args.nodes
    first, direct = median_ms(first_s), median_ms(direct_s)
    overhead_per_node = (first - direct) / n
    rows = [
        ("validate (parse + validate)", median_ms(validate_s), ""),
        ("first execution", first, f"{first / n * 1000:.1f} us/node"),
        ("fully cached re-run (execute)", median_ms(cached_s), "target < 10 ms"),
        ("fully cached re-run (parse+validate+execute)", median_ms(cached_total_s), "target < 10 ms"),
        (
            "re-run after root widget change (all)",
            median_ms(widget_s),
            f"{median_ms(widget_s) / n * 1000:.1f} us/node",
        ),
        ("reference: direct function calls", direct, ""),
    ]
    print(f"engine overhead, {n}-node graph, median of {args.repeats} runs")
    print(f"{'measurement':<48} {'ms':>10}  note")
    for name, value, note in rows:
        print(f"{name:<48} {value:>10.3f}  {note}")
    print(f"engine overhead per executed node: {overhead_per_node * 1000:.1f} us (target < 100 us)")
    print(f"first execution / direct calls ratio: {first / direct:.1f}x")


if __name__ == "__main__":
    main()
