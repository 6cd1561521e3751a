"""Plugin packs: native and ComfyUI-classic packs load the same way; broken packs are recorded."""

from __future__ import annotations

import os
import subprocess
import sys
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


SAMPLER_PACK = """
from engine import api


def sample_plain_steps(denoiser, x, sigmas, *, noise=None, callback=None):
    for i in range(len(sigmas) - 1):
        x = denoiser(x, sigmas[i])
    return x


def linear_schedule(model_sampling, steps):
    return [float(steps - i) for i in range(steps + 1)]


api.register_sampler("plugin_plain", sample_plain_steps)
api.register_scheduler("plugin_linear", linear_schedule)
api.register_sampler("euler", sample_plain_steps)  # a built-in name: refused, recorded


@api.node("ShowSampler", inputs=[api.Input("sampler", api.SAMPLER)], output_node=True)
def show_sampler(sampler):
    return api.NodeOutput(ui={"name": [sampler.name]})


NODES = [show_sampler]
"""


def _sampler_choices(registry, node_type, name):
    return registry.node_info(node_type)["input"]["required"][name][0]


def test_a_plugin_sampler_appears_in_every_sampler_choice_and_runs(tmp_path):
    from engine.folders import Folders
    from engine.runtime import build_runtime

    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "sampler_pack.py").write_text(SAMPLER_PACK)
    runtime = build_runtime(Folders.create(tmp_path), with_models=False)
    registry = runtime.registry
    for node_type in ("KSampler", "KSamplerAdvanced", "KSamplerSelect"):
        choices = _sampler_choices(registry, node_type, "sampler_name")
        assert choices[0] == "euler" and choices[-1] == "plugin_plain", node_type
    for node_type in ("KSampler", "KSamplerAdvanced", "BasicScheduler"):
        assert _sampler_choices(registry, node_type, "scheduler")[-1] == "plugin_linear", node_type
    pack = runtime.plugins.get("sampler_pack")
    assert pack is not None and pack.nodes == ["ShowSampler"]
    assert "already registered" in pack.node_errors["sampler euler"]
    prompt = {
        "1": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "plugin_plain"}},
        "2": {"class_type": "ShowSampler", "inputs": {"sampler": ["1", 0]}},
    }
    result = runtime.executor.run(parse_api_workflow(prompt))
    assert result.ok, [str(e) for e in result.errors]
    assert result.ui_outputs["2"] == {"name": ["plugin_plain"]}
    # Another runtime without the pack has its own library: nothing leaked through a global.
    plain = build_runtime(Folders.create(tmp_path), load_custom_nodes=False, with_models=False)
    assert "plugin_plain" not in _sampler_choices(plain.registry, "KSampler", "sampler_name")


def test_register_sampler_outside_a_pack_load_is_refused():
    from engine import api

    with pytest.raises(RuntimeError, match="while a node pack is being loaded"):
        api.register_sampler("stray", lambda denoiser, x, sigmas, **kw: x)


@pytest.mark.slow
def test_the_built_in_pack_leaves_the_import_name_nodes_free(tmp_path):
    """ComfyUI's custom-node packs `import nodes` expecting ComfyUI's module: ours must not sit there."""
    code = (
        "import importlib.util, sys, tempfile\n"
        "from engine.folders import Folders\n"
        "from engine.runtime import build_runtime\n"
        "runtime = build_runtime(Folders.create(tempfile.mkdtemp()), with_models=False)\n"
        "assert 'nodes' not in sys.modules, sys.modules['nodes']\n"
        "from engine.comfy_compat.binding import ENV_DIRECTORY\n"
        "spec = importlib.util.find_spec('nodes')\n"
        "# after packs load, `nodes` is ComfyUI's module of the compatibility layer, never the built-in pack\n"
        "assert spec is None or spec.origin.startswith(str(ENV_DIRECTORY)), spec\n"
        "module = runtime.registry.get('KSampler').function.__module__\n"
        "assert module == 'diffgraph_builtin_nodes.sampling', module\n"
        "assert runtime.registry.node_info('KSampler')['python_module'] == 'nodes'\n"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env
    )
    assert completed.returncode == 0, completed.stderr


def test_pyproject_installs_every_engine_package_and_the_pack_under_its_private_name():
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    env = REPO / "engine" / "comfy_compat" / "env"  # ComfyUI's top-level modules: package data, not packages
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "engine").rglob("__init__.py")
        if not p.is_relative_to(env)
    }
    listed = set(config["packages"])
    assert on_disk <= listed, f"add to pyproject.toml's packages: {sorted(on_disk - listed)}"
    assert "nodes" not in listed and config["package-dir"] == {"diffgraph_builtin_nodes": "nodes"}


def test_a_socket_type_typo_in_the_built_in_pack_stops_start_up_naming_the_node(tmp_path):
    from engine.plugins.loader import BuiltinPackError, PluginReport, load_builtin_pack

    pack = tmp_path / "builtin_with_typo"
    pack.mkdir()
    (pack / "__init__.py").write_text("")
    (pack / "latent.py").write_text(
        "from engine import api\n\n"
        '@api.node("EmptyLatentTypo", outputs=["LATNET"])\n'
        "def empty():\n"
        "    return (None,)\n\n"
        "NODES = [empty]\n"
    )
    module_name = f"builtin_typo_{abs(hash(str(tmp_path)))}"
    try:
        with pytest.raises(BuiltinPackError, match="EmptyLatentTypo") as caught:
            load_builtin_pack(NodeRegistry(), PluginReport(), module_name, path=pack)
        assert "LATNET" in str(caught.value)
    finally:
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
