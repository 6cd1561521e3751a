"""ComfyUI's V3 node API: io.ComfyNode classes register (NODE_CLASS_MAPPINGS or comfy_entrypoint), publish
ComfyUI's classic /object_info shape, and run with their hidden values, hooks and return shapes."""

from __future__ import annotations

import sys
import textwrap

import pytest

from engine.execution import events as ev
from engine.graph.api_format import parse_api_workflow
from tests.unit.compat.env_packs import runtime_with_pack
from tests.unit.engine.event_sinks import CollectingSink

V3_PACK = """
from comfy_api.latest import io, ui


class Scale(io.ComfyNode):
    calls = []

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3Scale",
            display_name="Scale (V3)",
            category="tests/v3",
            description="Multiplies and labels.",
            inputs=[
                io.Int.Input("value", default=2, min=0, max=100, tooltip="the value"),
                io.Combo.Input("mode", options=["double", "triple"], default="triple"),
                io.String.Input("label", default="n", optional=True, multiline=True),
                io.Float.Input("unused", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                               display_mode=io.NumberDisplay.slider),
            ],
            outputs=[io.Int.Output(display_name="scaled"), io.String.Output("text", tooltip="a label")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, value, mode, label="n", unused=0.5):
        cls.calls.append(value)
        factor = 2 if mode == "double" else 3
        return io.NodeOutput(value * factor, f"{label}:{cls.hidden.unique_id}:{cls.hidden.prompt}")


class Show(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3Show", category="tests/v3", is_output_node=True,
            inputs=[io.Int.Input("value", force_input=True), io.String.Input("text", force_input=True)],
        )

    @classmethod
    async def execute(cls, value, text):  # async execute is awaited
        shown = f"{value} {text} {sorted(cls.hidden.prompt)}"
        return io.NodeOutput(ui=ui.PreviewText(shown))


class Checked(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3Checked", category="tests/v3",
            inputs=[io.Int.Input("value", default=1, min=0, max=10),
                    io.Int.Input("fallback", default=0, lazy=True, optional=True)],
            outputs=[io.Int.Output()],
        )

    @classmethod
    def validate_inputs(cls, value):
        return True if value != 7 else "seven is not allowed"

    generation = 0

    @classmethod
    def fingerprint_inputs(cls, value, **kwargs):
        return cls.generation  # something outside the graph, like a file's hash

    @classmethod
    def check_lazy_status(cls, value, fallback=None):
        return ["fallback"] if value == 0 else []

    @classmethod
    def execute(cls, value, fallback=None):
        return (value if value else fallback,)


NODE_CLASS_MAPPINGS = {"V3Scale": Scale, "V3Show": Show, "V3Checked": Checked}
NODE_DISPLAY_NAME_MAPPINGS = {"V3Show": "Show (V3)"}
"""

ENTRYPOINT_PACK = """
from comfy_api.latest import ComfyExtension, io

loaded = []


class Hello(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Hello", display_name="Hello", category="tests/v3",
                         inputs=[io.String.Input("name", default="world")], outputs=[io.String.Output()])

    @classmethod
    def execute(cls, name):
        return io.NodeOutput(f"hello {name} ({','.join(loaded)})")


class Extension(ComfyExtension):
    async def on_load(self):
        loaded.append("on_load")

    async def get_node_list(self):
        return [Hello]


async def comfy_entrypoint():
    return Extension()
"""


@pytest.fixture
def runtime(tmp_path):
    entry = tmp_path / "custom_nodes" / "v3entry"
    entry.mkdir(parents=True)
    (entry / "__init__.py").write_text(textwrap.dedent(ENTRYPOINT_PACK))
    return runtime_with_pack(tmp_path, "v3pack", V3_PACK)  # loads both packs


def test_v3_nodes_register_with_comfyui_classic_object_info(runtime):
    record = runtime.plugins.get("v3pack")
    assert record.error is None and not record.node_errors, (record.error, record.node_errors)
    assert record.nodes == ["V3Scale", "V3Show", "V3Checked"]
    info = runtime.registry.node_info("V3Scale")
    assert info["input"]["required"] == {
        "value": ["INT", {"default": 2, "min": 0, "max": 100, "tooltip": "the value"}],
        "mode": [["double", "triple"], {"default": "triple", "multiselect": False}],
    }
    assert info["input"]["optional"]["label"] == ["STRING", {"default": "n", "multiline": True}]
    assert info["input"]["optional"]["unused"] == [
        "FLOAT",
        {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "display": "slider"},
    ]
    assert info["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert info["input_order"] == {"required": ["value", "mode"], "optional": ["label", "unused"]}
    assert info["output"] == ["INT", "STRING"]
    assert info["output_name"] == ["scaled", "STRING"]
    assert info["output_tooltips"] == ["", "a label"]
    assert (info["display_name"], info["category"], info["description"]) == (
        "Scale (V3)",
        "tests/v3",
        "Multiplies and labels.",
    )
    assert info["output_node"] is False and info["api_node"] is False
    show = runtime.registry.node_info("V3Show")
    assert show["display_name"] == "Show (V3)" and show["output_node"] is True
    # an output node's schema gets PROMPT and EXTRA_PNGINFO, as ComfyUI's Schema.finalize adds them
    assert show["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def test_v3_nodes_run_with_hidden_values_and_ui(runtime):
    prompt = {
        "1": {"class_type": "V3Scale", "inputs": {"value": 4, "mode": "double", "label": "x"}},
        "2": {"class_type": "V3Show", "inputs": {"value": ["1", 0], "text": ["1", 1]}},
    }
    result = runtime.executor.run(parse_api_workflow(prompt))
    assert result.ok, result.errors
    assert result.output("1", 0) == 8
    assert result.output("1", 1) == "x:1:None"  # unique_id filled; prompt not asked for, so None
    assert result.ui_outputs["2"] == {"text": ["8 x:1:None ['1', '2']"]}


def test_v3_validate_fingerprint_and_lazy_hooks(runtime):
    from engine.errors import WorkflowValidationError

    def run(value, fallback=5):
        prompt = {
            "1": {"class_type": "V3Checked", "inputs": {"value": value, "fallback": fallback}},
            "2": {"class_type": "V3Scale", "inputs": {"value": ["1", 0], "mode": "double"}},
            "3": {"class_type": "V3Show", "inputs": {"value": ["2", 0], "text": ["2", 1]}},
        }
        return runtime.executor.run(parse_api_workflow(prompt))

    with pytest.raises(WorkflowValidationError, match="seven is not allowed"):
        run(7)
    assert run(0, fallback=5).output("1") == 5  # lazy input requested by check_lazy_status
    assert run(4).executed == ["1", "2", "3"]
    assert run(4).executed == []  # same inputs and fingerprint: all cached
    sys.modules["diffgraph_custom_nodes.v3pack"].Checked.generation = 1
    assert run(4).executed == ["1", "2", "3"]  # the fingerprint changed: it and what it feeds rerun


def test_comfy_entrypoint_extension_loads_its_nodes(runtime):
    record = runtime.plugins.get("v3entry")
    assert record.error is None and not record.node_errors, (record.error, record.node_errors)
    assert record.nodes == ["V3Hello"]
    assert runtime.registry.node_info("V3Hello")["display_name"] == "Hello"
    prompt = {"1": {"class_type": "V3Hello", "inputs": {"name": "v3"}}}
    result = runtime.executor.run(parse_api_workflow(prompt), targets=["1"])
    assert result.ok and result.output("1") == "hello v3 (on_load)"


def test_a_failing_entrypoint_is_reported_on_the_pack(tmp_path):
    runtime = runtime_with_pack(
        tmp_path, "broken", "async def comfy_entrypoint():\n    raise RuntimeError('no')\n"
    )
    record = runtime.plugins.get("broken")
    assert record.node_errors["comfy_entrypoint"] == "error while calling comfy_entrypoint: RuntimeError: no"


def test_v3_block_execution_reports_its_message(tmp_path):
    source = """
    from comfy_api.latest import io

    class Gate(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="V3Gate", category="t", inputs=[io.Boolean.Input("open", default=False)],
                             outputs=[io.Int.Output()])

        @classmethod
        def execute(cls, open):
            return io.NodeOutput(1) if open else io.NodeOutput(block_execution="gate closed")

    class Sink(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="V3Sink", category="t", is_output_node=True,
                             inputs=[io.Int.Input("value", force_input=True)])

        @classmethod
        def execute(cls, value):
            return io.NodeOutput(ui={"values": [value]})

    NODE_CLASS_MAPPINGS = {"V3Gate": Gate, "V3Sink": Sink}
    """
    runtime = runtime_with_pack(tmp_path, "gate", source)
    prompt = {
        "1": {"class_type": "V3Gate", "inputs": {"open": False}},
        "2": {"class_type": "V3Sink", "inputs": {"value": ["1", 0]}},
    }
    sink = CollectingSink()
    result = runtime.executor.run(parse_api_workflow(prompt), sink=sink)
    assert result.ok and "2" not in result.ui_outputs
    failures = sink.of_type(ev.ExecutionFailed)
    assert [(f.node_id, f.exception_message) for f in failures] == [("2", "Execution Blocked: gate closed")]
