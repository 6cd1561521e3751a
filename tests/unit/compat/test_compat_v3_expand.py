"""Node expansion and ExecutionBlocker through ComfyUI's own names (comfy_execution.graph_utils.GraphBuilder,
comfy_execution.graph.ExecutionBlocker / DynamicPrompt), in classic and V3 packs, as real packs use them."""

from __future__ import annotations

import pytest

from engine.graph.api_format import parse_api_workflow
from tests.unit.compat.env_packs import runtime_with_pack

EXPANDING_PACK = """
import os

import folder_paths
from comfy_api.latest import io
from comfy_execution.graph import DynamicPrompt, ExecutionBlocker
from comfy_execution.graph_utils import GraphBuilder


class Number:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": -100, "max": 100})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "t"

    def run(self, value):
        return (value,)


class AddOne:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "t"

    def run(self, x):
        return (x + 1,)


class AddThree:
    \"\"\"Classic expansion: a chain of three AddOne nodes built with GraphBuilder.\"\"\"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"forceInput": True})}, "hidden": {"dynprompt": "DYNPROMPT"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "t"

    def run(self, x, dynprompt):
        assert isinstance(dynprompt, DynamicPrompt) and dynprompt.has_node("2")
        graph = GraphBuilder()
        node = graph.node("AddOne", x=x)
        for _ in range(2):
            node = graph.node("AddOne", x=node.out(0))
        return {"result": (node.out(0),), "expand": graph.finalize()}


class WriteValue:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "name": ("STRING", {"default": "v"})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "t"

    def run(self, value, name):
        with open(os.path.join(folder_paths.get_output_directory(), name + ".txt"), "w") as out:
            out.write(str(value))
        return {"ui": {"values": [value]}}


class Switch:
    \"\"\"Impact-Pack style: the unselected output is blocked.\"\"\"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"forceInput": True}), "first": ("BOOLEAN", {"default": True})}}

    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "run"
    CATEGORY = "t"

    def run(self, x, first):
        return (x, ExecutionBlocker(None)) if first else (ExecutionBlocker(None), x)


class Doubler(io.ComfyNode):
    \"\"\"V3 expansion: x + x through an AddTwoInputs node, with NodeOutput(expand=...).\"\"\"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="Doubler", category="t", enable_expand=True,
                         inputs=[io.Int.Input("x", force_input=True)], outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, x):
        graph = GraphBuilder()
        total = graph.node("AddTwo", a=x, b=x)
        return io.NodeOutput(total.out(0), expand=graph.finalize())


class NotExpandable(Doubler):
    @classmethod
    def define_schema(cls):
        schema = super().define_schema()
        schema.node_id, schema.enable_expand = "NotExpandable", False
        return schema


class AddTwo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="AddTwo", category="t", inputs=[io.Int.Input("a", force_input=True),
                         io.Int.Input("b", force_input=True)], outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, a, b):
        return io.NodeOutput(a + b)


class Numbers:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"
    CATEGORY = "t"

    def run(self):
        return ([1, 2, 3],)


class PlusOneEach:
    \"\"\"Called once per list element; each call builds its own graph (prefix per call index).\"\"\"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "t"

    def run(self, x):
        graph = GraphBuilder()
        node = graph.node("AddOne", x=x)
        return {"result": (node.out(0),), "expand": graph.finalize()}


class Collect:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {"forceInput": True})}}

    INPUT_IS_LIST = True
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "t"

    def run(self, values):
        return {"ui": {"values": values}}


NODE_CLASS_MAPPINGS = {
    "Numbers": Numbers, "PlusOneEach": PlusOneEach, "Collect": Collect,
    "Number": Number, "AddOne": AddOne, "AddThree": AddThree, "WriteValue": WriteValue, "Switch": Switch,
    "Doubler": Doubler, "NotExpandable": NotExpandable, "AddTwo": AddTwo,
}
"""


@pytest.fixture
def runtime(tmp_path):
    runtime = runtime_with_pack(tmp_path, "expanding", EXPANDING_PACK)
    assert not runtime.plugins.get("expanding").node_errors
    return runtime


def run(runtime, prompt):
    return runtime.executor.run(parse_api_workflow(prompt))


def test_classic_graphbuilder_expansion_runs_its_subgraph(runtime):
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 10}},
        "2": {"class_type": "AddThree", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "WriteValue", "inputs": {"value": ["2", 0], "name": "out"}},
    }
    result = run(runtime, prompt)
    assert result.ok, result.errors
    assert (runtime.folders.output / "out.txt").read_text() == "13"
    # GraphBuilder's default prefix: "<expanding node>.<call index>.<graph index>." as in ComfyUI
    assert [n for n in result.executed if n.startswith("2.")] == ["2.0.0.1", "2.0.0.2", "2.0.0.3"]
    # a cached rerun does not expand again; a changed input expands afresh under the same ids
    assert run(runtime, prompt).executed == []
    prompt["1"]["inputs"]["value"] = 20
    result = run(runtime, prompt)
    assert result.ok and (runtime.folders.output / "out.txt").read_text() == "23"
    assert "2.0.0.3" in result.executed


def test_each_call_of_a_mapped_node_gets_its_own_prefix(runtime):
    prompt = {
        "1": {"class_type": "Numbers", "inputs": {}},
        "2": {"class_type": "PlusOneEach", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "Collect", "inputs": {"values": ["2", 0]}},
    }
    result = run(runtime, prompt)
    assert result.ok, result.errors
    assert result.ui_outputs["3"] == {"values": [2, 3, 4]}
    assert sorted(n for n in result.executed if n.startswith("2.")) == ["2.0.0.1", "2.1.0.1", "2.2.0.1"]


def test_v3_node_output_expand(runtime):
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 21}},
        "2": {"class_type": "Doubler", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "WriteValue", "inputs": {"value": ["2", 0], "name": "doubled"}},
    }
    result = run(runtime, prompt)
    assert result.ok, result.errors
    assert (runtime.folders.output / "doubled.txt").read_text() == "42"
    assert result.output("2.0.0.1") == 42


def test_v3_expand_without_enable_expand_fails_as_in_comfyui(runtime):
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "NotExpandable", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "WriteValue", "inputs": {"value": ["2", 0], "name": "never"}},
    }
    result = run(runtime, prompt)
    assert not result.ok and result.errors[0].node_id == "2"
    assert "enable_expand=True" in str(result.errors[0])


def test_execution_blocker_from_comfy_execution_blocks_the_output_node(runtime):
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 5}},
        "2": {"class_type": "Switch", "inputs": {"x": ["1", 0], "first": False}},
        "3": {"class_type": "WriteValue", "inputs": {"value": ["2", 0], "name": "first"}},
        "4": {"class_type": "WriteValue", "inputs": {"value": ["2", 1], "name": "second"}},
    }
    result = run(runtime, prompt)
    assert result.ok, result.errors
    assert not (runtime.folders.output / "first.txt").exists()  # the blocked output node wrote nothing
    assert (runtime.folders.output / "second.txt").read_text() == "5"
    assert result.blocked == {"3": None}
