"""Classic declarations and return values ComfyUI accepts, and so must this engine: wildcard types,
unknown hidden kinds, defaults outside their range, open-ended optional inputs, short returns."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from engine.errors import WorkflowValidationError
from engine.execution.executor import Executor
from engine.graph.api_format import parse_api_workflow
from engine.plugins.loader import BuiltinPackError, PluginReport, load_all_packs, load_builtin_pack
from engine.registry import NodeRegistry

PACK = """
class AnyType(str):
    def __ne__(self, other):
        return False


any_type = AnyType("*")


class AlwaysEqual(str):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


class Number:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    def run(self, value):
        return (value,)


class PassAny:
    RETURN_TYPES = (any_type, "STRING")
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"anything": (any_type, {})}, "optional": {"star": (AlwaysEqual("x"),)}}

    def run(self, anything, star=None):
        return (anything, f"{type(anything).__name__}:{anything}|{star}")


class Show:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}, "optional": {"more": ("*",)}}

    def run(self, text, more="unset"):
        return {"ui": {"text": [f"{text}" if more == "unset" else f"{text}/{more}"]}}


class Lenient:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mode": (["fast", "slow"], {"default": "medium"}),
                "count": ("INT", {"default": 0, "min": 1, "max": 10}),
                "shared": ("STRING", {"default": "req"}),
            },
            "optional": {"shared": ("INT", {"default": 3})},
            "hidden": {"token": "SOME_FUTURE_KIND", "node_id": "UNIQUE_ID"},
        }

    def run(self, mode, count, shared, node_id=None, **rest):
        return (f"{mode},{count},{shared},{node_id},{sorted(rest)}",)


class ContainsAny(dict):
    def __contains__(self, key):
        return True


class Collect:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sep": ("STRING", {"default": ","})}, "optional": ContainsAny()}

    def run(self, sep, **extra):
        return (sep.join(f"{k}={extra[k]}" for k in sorted(extra)),)


class Short:
    RETURN_TYPES = ("INT", "STRING", "INT")
    OUTPUT_IS_LIST = (False, False, True)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (7,)


class UiAndResult:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return {"ui": {"text": ["shown"]}, "result": (41,)}


NODE_CLASS_MAPPINGS = {
    "Number": Number, "PassAny": PassAny, "Show": Show, "Lenient": Lenient, "Collect": Collect,
    "Short": Short, "UiAndResult": UiAndResult,
}
"""


@pytest.fixture
def loaded(tmp_path):
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    (custom / "compat_pack.py").write_text(PACK)
    registry = NodeRegistry()
    report = load_all_packs(registry, [custom], builtin_module=None)
    yield registry, report.get("compat_pack")
    for name in [n for n in sys.modules if n.startswith("diffgraph_custom_nodes")]:
        del sys.modules[name]


def run(registry: NodeRegistry, prompt: dict):
    result = Executor(registry).run(parse_api_workflow(prompt))
    assert result.ok, [str(e) for e in result.errors]
    return result.ui_outputs


def test_every_node_of_the_pack_registers(loaded):
    registry, record = loaded
    assert record.error is None and record.node_errors == {}, record.node_errors
    assert sorted(record.nodes) == sorted(
        ["Number", "PassAny", "Show", "Lenient", "Collect", "Short", "UiAndResult"]
    )


def test_wildcard_types_become_star_and_connect_to_anything(loaded):
    registry, _ = loaded
    info = registry.node_info("PassAny")
    assert info["input"]["required"]["anything"][0] == "*" and type(info["output"][0]) is str
    assert info["input"]["optional"]["star"] == ["*"]
    assert info["output"] == ["*", "STRING"]
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 5}},
        "2": {"class_type": "PassAny", "inputs": {"anything": ["1", 0], "star": "a constant"}},
        "3": {"class_type": "Show", "inputs": {"text": ["2", 1]}},
        # A "*" output feeds a STRING input, and any output feeds a "*" input.
        "4": {"class_type": "Show", "inputs": {"text": ["2", 0], "more": ["1", 0]}},
    }
    ui = run(registry, prompt)
    assert ui["3"] == {"text": ["int:5|a constant"]}
    assert ui["4"] == {"text": ["5/5"]}


def test_tolerated_declarations_are_repaired_with_warnings(loaded):
    registry, record = loaded
    required = registry.node_info("Lenient")["input"]["required"]
    assert required["count"][1]["default"] == 1  # clamped up to min
    assert required["mode"] == [["fast", "slow"], {}]  # the default that is no choice is dropped
    assert required["shared"][0] == "STRING"
    assert "shared" not in registry.node_info("Lenient")["input"].get("optional", {})
    text = "\n".join(record.warnings)
    assert "'medium' is not one of the choices" in text and "the default is dropped" in text
    assert "below min 1; using the default 1" in text and "SOME_FUTURE_KIND" in text
    assert "both required and optional" in text
    assert record.to_json()["warnings"] == record.warnings
    ui = run(
        registry,
        {
            "1": {"class_type": "Lenient", "inputs": {"mode": "slow", "count": 2, "shared": "s"}},
            "2": {"class_type": "Show", "inputs": {"text": ["1", 0]}},
        },
    )
    # The unknown hidden kind is not passed at all (as ComfyUI); the known one is.
    assert ui["2"] == {"text": ["slow,2,s,1,[]"]}


def test_open_ended_optional_inputs_receive_what_the_prompt_sets_or_links(loaded):
    registry, _ = loaded
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 3}},
        "2": {
            "class_type": "Collect",
            "inputs": {"sep": ";", "image_1": ["1", 0], "image_2": ["1", 0], "label": "x"},
        },
        "3": {"class_type": "Show", "inputs": {"text": ["2", 0]}},
    }
    assert run(registry, prompt)["3"] == {"text": ["image_1=3;image_2=3;label=x"]}
    broken = {**prompt, "2": {"class_type": "Collect", "inputs": {"sep": ";", "image_1": ["9", 0]}}}
    with pytest.raises(WorkflowValidationError, match="image_1"):
        Executor(registry).run(parse_api_workflow(broken))


def test_short_returns_leave_the_missing_outputs_none_and_dict_returns_carry_ui(loaded):
    registry, _ = loaded
    prompt = {
        "1": {"class_type": "Short", "inputs": {}},
        "2": {"class_type": "PassAny", "inputs": {"anything": ["1", 1]}},
        "3": {"class_type": "Show", "inputs": {"text": ["2", 1]}},
        "4": {"class_type": "PassAny", "inputs": {"anything": ["1", 0], "star": ["1", 2]}},
        "5": {"class_type": "Show", "inputs": {"text": ["4", 1]}},
        "6": {"class_type": "UiAndResult", "inputs": {}},
        "7": {"class_type": "PassAny", "inputs": {"anything": ["6", 0]}},
        "8": {"class_type": "Show", "inputs": {"text": ["7", 1]}},
    }
    ui = run(registry, prompt)
    assert ui["3"] == {"text": ["NoneType:None|None"]}
    assert ui["5"] == {"text": ["int:7|None"]}
    assert ui["6"] == {"text": ["shown"]} and ui["8"] == {"text": ["int:41|None"]}


def test_the_built_in_pack_stays_strict_about_what_plugins_get_away_with(tmp_path):
    pack = tmp_path / "builtin_lenient"
    pack.mkdir()
    (pack / "__init__.py").write_text("")
    (pack / "classic.py").write_text(
        textwrap.dedent(
            """
            class BelowMin:
                RETURN_TYPES = ("INT",)
                FUNCTION = "run"

                @classmethod
                def INPUT_TYPES(cls):
                    return {"required": {"n": ("INT", {"default": 0, "min": 1})}}

                def run(self, n):
                    return (n,)

            NODE_CLASS_MAPPINGS = {"BelowMin": BelowMin}
            """
        )
    )
    module_name = f"builtin_strict_{Path(tmp_path).name.replace('-', '_')}"
    try:
        with pytest.raises(BuiltinPackError, match="below min"):
            load_builtin_pack(NodeRegistry(), PluginReport(), module_name, path=pack)
    finally:
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
