"""Validation reports every problem at once, as structured records with ComfyUI's codes."""

from __future__ import annotations

import pytest

from engine import errors as E
from engine.errors import WorkflowValidationError
from engine.graph.api_format import parse_api_workflow
from engine.graph.validate import validate_workflow


def problems(registry, prompt, targets=None) -> list[E.ValidationIssue]:
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), registry, targets)
    return caught.value.issues


def codes(issues) -> set[tuple[str, str | None, str | None]]:
    return {(i.code, i.node_id, i.input_name) for i in issues}


def test_valid_workflow_passes_and_orders_dependencies_first(registry):
    prompt = {
        "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": "5"}},
        "1": {"class_type": "Const", "inputs": {"value": 7}},
    }
    validated = validate_workflow(parse_api_workflow(prompt), registry)
    assert validated.order == ["1", "2", "3"]
    assert validated.targets == ["3"]
    assert validated.nodes["2"].constants == {"b": 5}  # converted from the string "5"


def test_every_problem_is_reported_at_once(registry):
    prompt = {
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "Add", "inputs": {"b": 1}},  # a missing
        "3": {"class_type": "Add", "inputs": {"a": ["99", 0], "b": 1}},  # link to missing node
        "4": {"class_type": "Add", "inputs": {"a": ["5", 3], "b": 1}},  # output index out of range
        "5": {"class_type": "Const", "inputs": {"value": "seven"}},  # not convertible
        "6": {"class_type": "Const", "inputs": {"value": -5000}},  # below min
        "7": {"class_type": "Const", "inputs": {"value": 5000}},  # above max
        "8": {"class_type": "Pick", "inputs": {"choice": "purple"}},  # not among choices
        "9": {"class_type": "Bounds", "inputs": {"low": 50, "high": 10}},  # custom validate
        "10": {"class_type": "TakeLatent", "inputs": {"samples": ["11", 0]}},  # type mismatch
        "11": {"class_type": "MakeImage", "inputs": {}},
        "12": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
        "13": {"class_type": "Sink", "inputs": {"value": ["3", 0]}},
        "14": {"class_type": "Sink", "inputs": {"value": ["4", 0]}},
        "15": {"class_type": "Sink", "inputs": {"value": ["5", 0]}},
        "16": {"class_type": "Sink", "inputs": {"value": ["6", 0]}},
        "17": {"class_type": "Sink", "inputs": {"value": ["7", 0]}},
        "18": {"class_type": "Sink", "inputs": {"value": ["9", 0]}},
        "19": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
        # a value where a link is required (a forceInput INT takes one, as in ComfyUI; a LATENT does not)
        "20": {"class_type": "TakeLatent", "inputs": {"samples": 5}},
        "22": {"class_type": "FloatSink", "inputs": {"value": ["8", 0]}},
    }
    issues = problems(registry, prompt)
    found = codes(issues)
    assert (E.MISSING_NODE_TYPE, "1", None) in found
    assert (E.REQUIRED_INPUT_MISSING, "2", "a") in found
    assert (E.BAD_LINKED_INPUT, "3", "a") in found
    assert (E.BAD_LINKED_INPUT, "4", "a") in found
    assert (E.INVALID_INPUT_TYPE, "5", "value") in found
    assert (E.VALUE_SMALLER_THAN_MIN, "6", "value") in found
    assert (E.VALUE_BIGGER_THAN_MAX, "7", "value") in found
    assert (E.VALUE_NOT_IN_LIST, "8", "choice") in found
    assert (E.CUSTOM_VALIDATION_FAILED, "9", None) in found
    assert (E.RETURN_TYPE_MISMATCH, "10", "samples") in found
    assert (E.INVALID_INPUT_TYPE, "20", "samples") in found
    assert (E.RETURN_TYPE_MISMATCH, "22", "value") in found  # STRING into FLOAT
    # Records carry the node type and a message that says how to fix it.
    by_key = {(i.code, i.node_id): i for i in issues}
    choice = by_key[(E.VALUE_NOT_IN_LIST, "8")]
    assert choice.node_type == "Pick" and "red" in choice.details
    assert "low (50) must not exceed high (10)" in by_key[(E.CUSTOM_VALIDATION_FAILED, "9")].message
    assert "LATENT" in by_key[(E.RETURN_TYPE_MISMATCH, "10")].message
    assert "IMAGE" in by_key[(E.RETURN_TYPE_MISMATCH, "10")].message


def test_node_errors_have_comfyui_shape(registry):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 5000}},
        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
    }
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), registry)
    node_errors = caught.value.node_errors()
    assert set(node_errors) == {"1"}
    entry = node_errors["1"]
    assert entry["class_type"] == "Const"
    assert entry["errors"][0]["type"] == "value_bigger_than_max"
    assert entry["errors"][0]["extra_info"]["input_name"] == "value"
    assert caught.value.prompt_error()["type"] == "prompt_outputs_failed_validation"


def test_cycle_is_reported_with_its_path(registry):
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
        "4": {"class_type": "Sink", "inputs": {"value": ["3", 0]}},
    }
    issues = problems(registry, prompt)
    cycle = [i for i in issues if i.code == E.DEPENDENCY_CYCLE]
    assert {i.node_id for i in cycle} == {"1", "2", "3"}
    assert "->" in cycle[0].message


def test_every_cycle_is_reported(registry):
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Add", "inputs": {"a": ["5", 0], "b": 1}},
        "5": {"class_type": "Add", "inputs": {"a": ["4", 0], "b": 1}},
        "6": {"class_type": "Sink", "inputs": {"value": ["5", 0]}},
    }
    cycle = [i for i in problems(registry, prompt) if i.code == E.DEPENDENCY_CYCLE]
    assert sorted(i.node_id for i in cycle) == ["1", "2", "4", "5"]


def test_no_output_node(registry):
    issues = problems(registry, {"1": {"class_type": "Const", "inputs": {"value": 1}}})
    assert [i.code for i in issues] == [E.PROMPT_NO_OUTPUTS]
    assert issues[0].node_id is None and "SaveImage" in issues[0].details


def test_unknown_node_types_are_reported_even_without_an_output_node(registry):
    """An unknown node may be the output node: say so, and name every unknown node, needed or not."""
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 1}},
        "2": {"class_type": "SaveVideoFromAPlugin", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "AnotherMissing", "inputs": {}},
    }
    issues = problems(registry, prompt)
    assert codes(issues) == {
        (E.MISSING_NODE_TYPE, "2", None),
        (E.MISSING_NODE_TYPE, "3", None),
        (E.PROMPT_NO_OUTPUTS, None, None),
    }
    assert "install the unknown node types" in next(i for i in issues if i.node_id is None).details


def test_unknown_node_type_is_the_top_level_error_as_in_comfyui(registry):
    """ComfyUI answers an unknown class_type with an `invalid_prompt` error naming it, before any
    "no outputs" verdict; frontends show this message, so it must be the one about the missing node."""
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 1}},
        "2": {"class_type": "SaveVideoFromAPlugin", "inputs": {"value": ["1", 0]}},
    }
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), registry)
    error = caught.value.prompt_error()
    assert error["type"] == "invalid_prompt"
    assert "SaveVideoFromAPlugin does not exist" in error["message"]
    assert error["details"] == "Node ID '#2'"
    assert set(caught.value.node_errors()) == {"2"}


def test_unknown_node_types_outside_what_runs_are_reported(registry):
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 1}},
        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "NotInstalled", "inputs": {}},  # may be an output node of a missing plugin
    }
    assert codes(problems(registry, prompt)) == {(E.MISSING_NODE_TYPE, "3", None)}


def test_unknown_target(registry):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}}}
    issues = problems(registry, prompt, targets=["42"])
    assert issues[0].code == E.INVALID_TARGET


def test_problems_outside_what_runs_are_ignored(registry):
    """Like ComfyUI: only the nodes the outputs need are validated."""
    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 1}},
        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Const", "inputs": {"value": 999999}},  # unused and out of range
    }
    validated = validate_workflow(parse_api_workflow(prompt), registry)
    assert set(validated.order) == {"1", "2"}


def test_raising_validate_hook_is_reported_not_raised(registry, world):
    from engine import api
    from engine.registry import NodeRegistry

    def bad_hook(x):
        raise ZeroDivisionError("oops")

    @api.node("Bad", inputs=[api.Int("x", 1)], output_node=True, validate=bad_hook)
    def bad(x):
        return api.NodeOutput()

    reg = NodeRegistry()
    reg.register(bad)
    issues = problems(reg, {"1": {"class_type": "Bad", "inputs": {"x": 1}}})
    assert issues[0].code == E.EXCEPTION_DURING_VALIDATION and "ZeroDivisionError" in issues[0].message
