"""The V3 inputs newer packs (ComfyUI-KJNodes) declare: MatchType, MultiType, Autogrow and DynamicCombo register
as plain inputs and reach execute in the shape the node expects; plus classic lazy inputs without a hook."""

from __future__ import annotations

import pytest

from engine.graph.api_format import parse_api_workflow
from tests.unit.compat.env_packs import runtime_with_pack

DYNAMIC_PACK = """
from comfy_api.latest import io


class Sharpen(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        template = io.MatchType.Template("img_or_mask", [io.Image, io.Mask])
        return io.Schema(
            node_id="DynSharpen", category="t", search_aliases=["sharpen", "unsharp"],
            inputs=[
                io.MatchType.Input("image", template),
                io.DynamicCombo.Input("method", options=[
                    io.DynamicCombo.Option(key="soft", inputs=[
                        io.Float.Input("strength", default=0.5, min=0.0, max=1.0, advanced=True)]),
                    io.DynamicCombo.Option(key="hard", inputs=[
                        io.Float.Input("strength", default=2.0, min=0.0, max=3.0),
                        io.Int.Input("passes", default=2, min=1, max=9)]),
                ]),
            ],
            outputs=[io.MatchType.Output(template, display_name="output")],
        )

    @classmethod
    def execute(cls, image, method):
        return io.NodeOutput(image)


class Calc(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        variable = io.MultiType.Input("var", [io.Int, io.Float, io.Boolean], optional=True)
        template = io.Autogrow.TemplateNames(input=variable, names=["a", "b", "c"], min=2)
        return io.Schema(
            node_id="DynCalc", category="t",
            inputs=[io.Autogrow.Input("variables", template=template), io.String.Input("expression", default="a+b")],
            outputs=[io.Float.Output()],
        )

    @classmethod
    def execute(cls, variables, expression):
        return io.NodeOutput(float(eval(expression, {}, dict(variables))))


class Echo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DynEcho", category="t", is_output_node=True,
            inputs=[io.DynamicCombo.Input("method", options=[
                        io.DynamicCombo.Option(key="soft", inputs=[io.Float.Input("strength", default=0.5)]),
                        io.DynamicCombo.Option(key="hard", inputs=[io.Int.Input("passes", default=2)])]),
                    io.Float.Input("result", force_input=True, optional=True)],
        )

    @classmethod
    def execute(cls, method, result=None):
        return io.NodeOutput(ui={"method": [method], "result": [result]})


class LazyNoHook:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 1}), "b": ("INT", {"default": 2, "lazy": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "t"

    def run(self, a, b=None):
        return {"ui": {"seen": [a, b]}, "result": (a,)}


NODE_CLASS_MAPPINGS = {"DynSharpen": Sharpen, "DynCalc": Calc, "DynEcho": Echo, "LazyNoHook": LazyNoHook}
"""


@pytest.fixture
def runtime(tmp_path):
    runtime = runtime_with_pack(tmp_path, "dynamic", DYNAMIC_PACK)
    assert not runtime.plugins.get("dynamic").node_errors
    return runtime


def test_match_type_and_dynamic_combo_inputs(runtime):
    info = runtime.registry.node_info("DynSharpen")
    assert info["input"]["required"]["image"][0] == "IMAGE,MASK"
    assert info["output"] == ["IMAGE,MASK"] and info["output_name"] == ["output"]
    assert info["input"]["required"]["method"][0] == ["soft", "hard"]
    # an option input shared by two options accepts what either accepts
    strength = info["input"]["optional"]["method.strength"]
    assert strength[0] == "FLOAT" and (strength[1]["min"], strength[1]["max"]) == (0.0, 3.0)
    assert strength[1]["advanced"] is True  # options of newer ComfyUI versions are published as given
    assert info["search_aliases"] == ["sharpen", "unsharp"]


def test_dynamic_combo_value_reaches_execute_as_a_dict(runtime):
    prompt = {
        "1": {"class_type": "DynEcho", "inputs": {"method": "hard", "method.passes": 4}},
        "2": {"class_type": "DynEcho", "inputs": {"method": "soft"}},
    }
    result = runtime.executor.run(parse_api_workflow(prompt))
    assert result.ok, result.errors
    assert result.ui_outputs["1"]["method"] == [{"method": "hard", "passes": 4}]
    assert result.ui_outputs["2"]["method"] == [{"method": "soft", "strength": 0.5}]  # the option's default


def test_autogrow_multitype_inputs_reach_execute_as_a_dict(runtime):
    info = runtime.registry.node_info("DynCalc")
    assert info["input"]["optional"]["variables.a"][0] == "INT,FLOAT,BOOLEAN"
    prompt = {
        "1": {"class_type": "DynCalc", "inputs": {"expression": "a*b+c"}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": 6}},
        "3": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.5}},
        "4": {"class_type": "DynEcho", "inputs": {"method": "soft", "result": ["1", 0]}},
    }
    prompt["1"]["inputs"].update({"variables.a": ["2", 0], "variables.b": ["2", 0], "variables.c": ["3", 0]})
    result = runtime.executor.run(parse_api_workflow(prompt))
    assert result.ok, result.errors
    assert result.ui_outputs["4"]["result"] == [36.5]


def test_classic_lazy_input_without_check_lazy_status_is_never_evaluated(runtime):
    """ComfyUI registers such a node and leaves the lazy input unevaluated (diffgraph refused it before)."""
    prompt = {
        "1": {"class_type": "LazyNoHook", "inputs": {"a": 3, "b": ["2", 0]}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": 4}},
    }
    result = runtime.executor.run(parse_api_workflow(prompt))
    assert result.ok, result.errors
    assert result.ui_outputs["1"] == {"seen": [3, None]} and "2" not in result.executed
