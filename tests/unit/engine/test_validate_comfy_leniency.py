"""Prompts ComfyUI accepts that a strict reading would refuse: undeclared linked inputs of pack nodes (which
the function receives, **kwargs style), constants given to forceInput widget inputs, and prompts where only
some output nodes are valid (those run; the others' errors are reported)."""

from __future__ import annotations

import pytest

from engine import errors as E
from engine.errors import WorkflowValidationError
from engine.execution.cache import OutputCache
from engine.execution.executor import Executor
from engine.graph.api_format import parse_api_workflow
from engine.graph.validate import validate_workflow
from engine.plugins.classic import adapt_classic_node


class MakeBatch:
    """A pack node declaring one input and taking more through **kwargs, as Impact-Pack's
    ImpactMakeImageBatch does (the frontend adds image2, image3 ... as links)."""

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "test"
    OUTPUT_NODE = True
    seen: list[dict[str, object]] = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value1": ("INT", {"forceInput": True})}}

    def run(self, **kwargs):
        type(self).seen.append(dict(kwargs))
        return {"ui": {"values": [sorted(kwargs.items())]}, "result": (str(sorted(kwargs)),)}


@pytest.fixture
def classic_registry(registry):
    MakeBatch.seen = []
    registry.register(adapt_classic_node("MakeBatch", MakeBatch), source="pack")
    return registry


def _execute(registry, prompt, partial=False):
    workflow = parse_api_workflow(prompt)
    validated = (
        validate_workflow(workflow, registry, partial=True)
        if partial
        else validate_workflow(workflow, registry)
    )
    return validated, Executor(registry, OutputCache()).execute(validated)


def test_undeclared_linked_input_reaches_a_classic_kwargs_node(classic_registry, world):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 4}},
        "2": {"class_type": "Const", "inputs": {"value": 9}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
        # value2 and value3 are not declared; the constant "note" is not either, and is dropped
        "4": {
            "class_type": "MakeBatch",
            "inputs": {"value1": ["1", 0], "value2": ["3", 0], "value3": ["1", 0], "note": "x"},
        },
    }
    validated, result = _execute(classic_registry, prompt)
    assert result.ok, result.errors
    assert set(validated.nodes["4"].links) == {"value1", "value2", "value3"}
    assert MakeBatch.seen == [{"value1": 4, "value2": 10, "value3": 4}]
    assert world.calls["Add"] == 1  # the undeclared input's source was computed


def test_undeclared_linked_input_still_needs_an_existing_source(classic_registry):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 4}},
        "2": {
            "class_type": "MakeBatch",
            "inputs": {"value1": ["1", 0], "value2": ["1", 3], "value3": ["9", 0]},
        },
    }
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), classic_registry)
    found = {(i.code, i.node_id, i.input_name) for i in caught.value.issues}
    assert found == {(E.BAD_LINKED_INPUT, "2", "value2"), (E.BAD_LINKED_INPUT, "2", "value3")}


def test_built_in_node_rejects_an_undeclared_linked_input(registry, world):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 4}},
        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0], "extra": ["1", 0]}},
    }
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), registry)
    [issue] = caught.value.issues
    assert (issue.code, issue.node_id, issue.input_name) == (E.BAD_LINKED_INPUT, "2", "extra")
    assert "'extra'" in issue.message and "Sink" in issue.message
    assert world.calls["Const"] == 0


def test_constant_for_a_force_input_int_runs_with_the_usual_checks(registry, world):
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": "6", "b": 1}},  # a is forceInput; "6" converts
        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Sink", "inputs": {"value": 3}},
    }
    validated, result = _execute(registry, prompt)
    assert result.ok, result.errors
    assert validated.nodes["1"].constants == {"a": 6, "b": 1}
    assert result.ui_outputs["2"] == {"values": [7]}
    assert result.ui_outputs["3"] == {"values": [3]}


def test_out_of_range_or_mistyped_constant_for_a_force_input_is_still_rejected(classic_registry):
    class Bounded(MakeBatch):
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value1": ("INT", {"forceInput": True, "min": 0, "max": 10})}}

    classic_registry.register(adapt_classic_node("Bounded", Bounded), source="pack")
    prompt = {
        "1": {"class_type": "Bounded", "inputs": {"value1": 11}},
        "2": {"class_type": "Bounded", "inputs": {"value1": "many"}},
        "3": {"class_type": "Bounded", "inputs": {"value1": -1}},
    }
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), classic_registry)
    found = {(i.code, i.node_id) for i in caught.value.issues}
    assert found == {
        (E.VALUE_BIGGER_THAN_MAX, "1"),
        (E.INVALID_INPUT_TYPE, "2"),
        (E.VALUE_SMALLER_THAN_MIN, "3"),
    }


def _mixed_prompt() -> dict:
    return {
        "1": {"class_type": "Const", "inputs": {"value": 5000}},  # above max: output 3 fails
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Const", "inputs": {"value": 8}},
        "5": {"class_type": "Sink", "inputs": {"value": ["4", 0]}},
    }


def test_partial_validation_runs_the_valid_output_and_reports_the_failed_one(registry, world):
    validated, result = _execute(registry, _mixed_prompt(), partial=True)
    assert validated.targets == ["5"] and validated.rejected_targets == ["3"]
    assert set(validated.order) == {"4", "5"}
    assert result.ok and result.ui_outputs == {"5": {"values": [8]}}
    assert world.calls["Add"] == 0 and world.calls["Sink"] == 1
    assert set(validated.node_errors) == {"1"}
    entry = validated.node_errors["1"]
    assert entry["class_type"] == "Const" and entry["dependent_outputs"] == ["3"]
    assert entry["errors"][0]["type"] == E.VALUE_BIGGER_THAN_MAX
    # without `partial` (the default), the whole workflow is refused as before
    with pytest.raises(WorkflowValidationError):
        validate_workflow(parse_api_workflow(_mixed_prompt()), registry)


def test_partial_validation_rejects_when_no_output_is_valid(registry):
    prompt = _mixed_prompt()
    prompt["4"]["inputs"]["value"] = -5000
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), registry, partial=True)
    assert set(caught.value.node_errors()) == {"1", "4"}
    assert caught.value.prompt_error()["type"] == "prompt_outputs_failed_validation"


def test_partial_validation_still_rejects_an_unknown_node_type(registry):
    prompt = _mixed_prompt()
    prompt["6"] = {"class_type": "NoSuchNode", "inputs": {}}
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), registry, partial=True)
    assert caught.value.prompt_error()["type"] == "invalid_prompt"


V3_PACK = """
from comfy_api.latest import io


class Gather(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3Gather", category="t", is_output_node=True,
            inputs=[io.Int.Input("first", force_input=True)],
        )

    @classmethod
    def execute(cls, **kwargs):
        return io.NodeOutput(ui={"seen": [sorted(kwargs.items())]})


NODE_CLASS_MAPPINGS = {"V3Gather": Gather}
"""


def test_undeclared_linked_input_reaches_a_v3_node(tmp_path):
    from tests.unit.compat.env_packs import runtime_with_pack

    runtime = runtime_with_pack(tmp_path, "gather", V3_PACK)
    prompt = {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 6}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
        "3": {"class_type": "V3Gather", "inputs": {"first": ["1", 0], "second": ["2", 0], "note": 1}},
    }
    result = runtime.executor.run(parse_api_workflow(prompt))
    assert result.ok, result.errors
    assert result.ui_outputs["3"]["seen"] == [[("first", 6), ("second", 7)]]
