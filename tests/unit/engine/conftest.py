"""Stub nodes for engine tests: tiny, counting, no torch."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from engine import api
from engine.execution.cache import OutputCache
from engine.execution.executor import Executor
from engine.registry import NodeRegistry


class StubWorld:
    """Holds the call counter and external state the stub nodes read."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.external = "v1"
        self.progress_started = threading.Event()

    def definitions(self) -> list[api.NodeDefinition]:
        world = self

        @api.node("Const", inputs=[api.Int("value", 0, min=-1000, max=1000)], outputs=["INT"])
        def const(value):
            world.calls["Const"] += 1
            return (value,)

        @api.node(
            "Add",
            inputs=[api.Input("a", "INT", force_input=True), api.Int("b", 1, min=-1000, max=1000)],
            outputs=[api.Output("INT", "sum")],
        )
        def add(a, b):
            world.calls["Add"] += 1
            return (a + b,)

        @api.node(
            "Seeded",
            inputs=[
                api.Input("a", "INT", force_input=True),
                api.Int("seed", 0, min=0, max=2**32, control_after_generate=True),
                api.Int("bias", 0, min=-1000, max=1000, optional=True),
            ],
            outputs=["INT"],
        )
        def seeded(a, seed, bias=0):
            world.calls["Seeded"] += 1
            return (a * 1000 + seed + bias,)

        @api.node("Sink", inputs=[api.Input("value", "INT", force_input=True)], output_node=True)
        def sink(value):
            world.calls["Sink"] += 1
            return api.NodeOutput(ui={"values": [value]})

        @api.node("Fail", inputs=[api.Input("value", "INT", force_input=True)], outputs=["INT"])
        def fail(value):
            world.calls["Fail"] += 1
            raise RuntimeError(f"boom at {value}")

        @api.node(
            "Pick",
            inputs=[api.Combo("choice", ["red", "green", "blue"], default="red")],
            outputs=["STRING"],
        )
        def pick(choice):
            world.calls["Pick"] += 1
            return (choice,)

        @api.node(
            "Scale",
            inputs=[api.Input("a", "INT", force_input=True), api.Float("factor", 1.0, min=0.0, max=10.0)],
            outputs=["FLOAT"],
        )
        def scale(a, factor):
            world.calls["Scale"] += 1
            return (a * factor,)

        @api.node("FloatSink", inputs=[api.Input("value", "FLOAT", force_input=True)], output_node=True)
        def float_sink(value):
            world.calls["FloatSink"] += 1
            return api.NodeOutput(ui={"values": [value]})

        @api.node("MakeImage", outputs=["IMAGE"])
        def make_image():
            return ("image",)

        @api.node("TakeLatent", inputs=[api.Input("samples", "LATENT")], output_node=True)
        def take_latent(samples):
            return api.NodeOutput(ui={})

        def check_switch(condition, on_true=None, on_false=None):
            return ["on_true"] if condition else ["on_false"]

        @api.node(
            "Switch",
            inputs=[
                api.Boolean("condition", True),
                api.Input("on_true", "INT", lazy=True),
                api.Input("on_false", "INT", lazy=True),
            ],
            outputs=["INT"],
            check_lazy=check_switch,
        )
        def switch(condition, on_true, on_false):
            world.calls["Switch"] += 1
            return (on_true if condition else on_false,)

        @api.node(
            "Range", inputs=[api.Int("count", 3, min=0, max=100)], outputs=[api.Output("INT", is_list=True)]
        )
        def make_range(count):
            world.calls["Range"] += 1
            return (list(range(count)),)

        @api.node(
            "ListSum",
            inputs=[api.Input("values", "INT", force_input=True)],
            outputs=["INT"],
            input_is_list=True,
        )
        def list_sum(values):
            world.calls["ListSum"] += 1
            return (sum(values),)

        def check_bounds(low, high):
            return None if low <= high else f"low ({low}) must not exceed high ({high})"

        @api.node(
            "Bounds",
            inputs=[api.Int("low", 0, min=-100, max=100), api.Int("high", 10, min=-100, max=100)],
            outputs=["INT"],
            validate=check_bounds,
        )
        def bounds(low, high):
            return (high - low,)

        def external_fingerprint(name):
            return world.external

        @api.node(
            "ReadExternal",
            inputs=[api.String("name", "x")],
            outputs=["INT"],
            fingerprint=external_fingerprint,
        )
        def read_external(name):
            world.calls["ReadExternal"] += 1
            return (len(world.external),)

        @api.node(
            "Slow",
            inputs=[api.Input("a", "INT", force_input=True), api.Int("steps", 5, min=1, max=10000)],
            outputs=["INT"],
        )
        def slow(a, steps, context):
            world.calls["Slow"] += 1
            for step in range(1, steps + 1):
                world.progress_started.set()
                context.progress(step, steps)
                threading.Event().wait(0.002)
            return (a,)

        return [
            const,
            add,
            seeded,
            sink,
            fail,
            pick,
            scale,
            float_sink,
            make_image,
            take_latent,
            switch,
            make_range,
            list_sum,
            bounds,
            read_external,
            slow,
        ]


@pytest.fixture
def world() -> StubWorld:
    return StubWorld()


@pytest.fixture
def registry(world: StubWorld) -> NodeRegistry:
    reg = NodeRegistry()
    for definition in world.definitions():
        reg.register(definition, source="stubs", builtin=True)
    return reg


@pytest.fixture
def executor(registry: NodeRegistry) -> Executor:
    return Executor(registry, OutputCache(max_entries=1000))
