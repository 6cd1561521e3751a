"""Plugin packs: native and ComfyUI-classic packs load the same way; broken packs are recorded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.execution.executor import Executor
from engine.graph.api_format import parse_api_workflow
from engine.plugins.loader import load_all_packs
from engine.registry import NodeRegistry

REPO = Path(__file__).resolve().parents[3]

CLASSIC_PACK = """
class Multiply:
    CATEGORY = "math"
    RETURN_TYPES = ("INT", "STRING")
    RETURN_NAMES = ("product", "as_text")
    FUNCTION = "run"
    DESCRIPTION = "multiplies"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "a": ("INT", {"default": 2, "min": 0, "max": 100}),
                "mode": (["exact", "double"],),
            },
            "optional": {"b": ("INT", {"default": 3, "min": 0, "max": 100})},
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def run(self, a, mode, b=3, unique_id=None, prompt=None):
        value = a * b * (2 if mode == "double" else 1)
        return (value, f"{value} from node {unique_id} of {len(prompt)}")


class Show:
    CATEGORY = "math"
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CALLS = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always re-run, like ComfyUI's convention

    def show(self, text):
        Show.CALLS.append(text)
        return {"ui": {"text": [text]}, "result": ()}


class Explode:
    CATEGORY = "math"
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", {"default": 3})}}

    @classmethod
    def VALIDATE_INPUTS(cls, n):
        return True if n < 10 else "n must be below 10"

    def run(self, n):
        return (list(range(n)),)


class Total:
    CATEGORY = "math"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {"forceInput": True})}}

    def run(self, values):
        return (f"total {sum(values)} of {len(values)}",)


class Choose:
    CATEGORY = "math"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "first": ("BOOLEAN", {"default": True}),
            "x": ("INT", {"lazy": True, "forceInput": True}),
            "y": ("INT", {"lazy": True, "forceInput": True}),
        }}

    def check_lazy_status(self, first, x=None, y=None):
        return ["x"] if first else ["y"]

    def run(self, first, x=None, y=None):
        return (x if first else y,)


NODE_CLASS_MAPPINGS = {"Multiply": Multiply, "Show": Show, "Explode": Explode, "Total": Total, "Choose": Choose}
NODE_DISPLAY_NAME_MAPPINGS = {"Multiply": "Multiply Ints"}
WEB_DIRECTORY = "./js"
"""


def make_packs(folder: Path) -> None:
    pack = folder / "classic_math"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(
        "from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, WEB_DIRECTORY\n"
    )
    (pack / "nodes.py").write_text(CLASSIC_PACK)
    (pack / "js").mkdir()
    (folder / "native_one.py").write_text(
        textwrap.dedent(
            """
            from engine import api

            @api.node("Negate", inputs=[api.Input("v", "INT", force_input=True)], outputs=["INT"], category="math")
            def negate(v):
                return (-v,)

            NODES = [negate]
            """
        )
    )
    (folder / "broken_pack.py").write_text("import this_module_does_not_exist\n")
    (folder / "exits.py").write_text("raise SystemExit(3)\n")
    (folder / "hijack.py").write_text(
        textwrap.dedent(
            """
            from engine import api

            @api.node("PrimitiveInt", outputs=["INT"])
            def fake():
                return (666,)

            @api.node("BadDefault", inputs=[api.Int("x", 500, min=0, max=10)], outputs=["INT"])
            def bad(x):
                return (x,)

            NODES = [fake, bad]
            """
        )
    )
    (folder / "skipped.py.disabled").write_text("raise RuntimeError('must not be imported')\n")


@pytest.fixture
def loaded(tmp_path):
    make_packs(tmp_path / "custom_nodes")
    registry = NodeRegistry()
    report = load_all_packs(registry, [tmp_path / "custom_nodes"])
    return registry, report


def test_packs_load_and_failures_are_recorded(loaded):
    registry, report = loaded
    names = {p.name: p for p in report.packs}
    assert set(names) == {"nodes", "classic_math", "native_one", "broken_pack", "exits", "hijack"}
    assert names["classic_math"].style == "classic" and names["classic_math"].loaded
    assert names["classic_math"].web_directory.endswith("js")
    assert names["native_one"].nodes == ["Negate"]
    assert "this_module_does_not_exist" in names["broken_pack"].error
    assert "SystemExit" in names["exits"].error
    # A plugin cannot replace a built-in node; its other bad node is reported too.
    hijack = names["hijack"]
    assert "PrimitiveInt" in hijack.node_errors and "built-in" in hijack.node_errors["PrimitiveInt"]
    assert "above max" in hijack.node_errors["BadDefault"]
    assert registry.source_of("PrimitiveInt") == "nodes"
    assert {p.name for p in report.failed()} == {"broken_pack", "exits", "hijack"}


def test_classic_schema_matches_comfyui_shape(loaded):
    registry, _ = loaded
    info = registry.node_info("Multiply")
    assert info["input"]["required"]["a"] == ["INT", {"default": 2, "min": 0, "max": 100}]
    assert info["input"]["required"]["mode"] == [["exact", "double"], {}]
    assert info["input"]["optional"]["b"][0] == "INT"
    assert info["input"]["hidden"] == {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}
    assert info["input_order"] == {"required": ["a", "mode"], "optional": ["b"]}
    assert info["output"] == ["INT", "STRING"] and info["output_name"] == ["product", "as_text"]
    assert info["display_name"] == "Multiply Ints" and info["category"] == "math"
    assert info["python_module"] == "classic_math" and info["output_node"] is False
    assert registry.node_info("Explode")["output_is_list"] == [True]


def test_classic_nodes_execute_through_the_same_executor(loaded):
    registry, _ = loaded
    executor = Executor(registry)
    prompt = {
        "1": {"class_type": "Multiply", "inputs": {"a": 4, "mode": "double", "b": 5}},
        "2": {"class_type": "Show", "inputs": {"text": ["1", 1]}},
        "3": {"class_type": "Explode", "inputs": {"n": 4}},
        "4": {"class_type": "Negate", "inputs": {"v": ["3", 0]}},
        "5": {"class_type": "Total", "inputs": {"values": ["4", 0]}},
        "6": {"class_type": "Show", "inputs": {"text": ["5", 0]}},
        "7": {"class_type": "Choose", "inputs": {"first": False, "x": ["1", 0], "y": ["9", 0]}},
        "8": {"class_type": "Multiply", "inputs": {"a": ["7", 0], "mode": "exact"}},
        "9": {"class_type": "Negate", "inputs": {"v": ["1", 0]}},
        "10": {"class_type": "Show", "inputs": {"text": ["8", 1]}},
    }
    result = executor.run(parse_api_workflow(prompt))
    assert result.ok, [str(e) for e in result.errors]
    assert result.ui_outputs["2"] == {"text": ["40 from node 1 of 10"]}
    assert result.ui_outputs["6"] == {"text": ["total -6 of 4"]}
    assert result.ui_outputs["10"] == {"text": ["-120 from node 8 of 10"]}
    # IS_CHANGED = NaN: Show nodes run again on an identical prompt, Multiply does not.
    again = executor.run(parse_api_workflow(prompt))
    assert set(again.executed) == {"2", "6", "10"}


def test_classic_validate_inputs(loaded):
    from engine.errors import WorkflowValidationError
    from engine.graph.validate import validate_workflow

    registry, _ = loaded
    prompt = {
        "1": {"class_type": "Explode", "inputs": {"n": 12}},
        "2": {"class_type": "Total", "inputs": {"values": ["1", 0]}},
        "3": {"class_type": "Show", "inputs": {"text": ["2", 0]}},
    }
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(parse_api_workflow(prompt), registry)
    assert caught.value.issues[0].message == "n must be below 10"


def test_example_pack_in_repo_loads_both_styles():
    registry = NodeRegistry()
    report = load_all_packs(registry, [REPO / "custom_nodes"])
    pack = report.get("example_pack")
    assert pack is not None and pack.loaded and pack.style == "mixed", pack and pack.error
    assert set(pack.nodes) == {"ExampleRepeatText", "ExampleInvertImage", "ExampleShowText"}
    result = Executor(registry).run(
        parse_api_workflow(
            {
                "1": {"class_type": "ExampleRepeatText", "inputs": {"text": "ab", "times": 3}},
                "2": {"class_type": "ExampleShowText", "inputs": {"text": ["1", 0]}},
            }
        )
    )
    assert result.ui_outputs["2"] == {"text": ["ababab"]}
