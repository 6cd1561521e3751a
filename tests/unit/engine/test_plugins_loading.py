"""How custom packs are imported, as ComfyUI imports them: relative imports, stable module names,
prestartup scripts, packs without nodes, and `diffgraph nodes --json` with chatty packs."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.execution.executor import Executor
from engine.graph.api_format import parse_api_workflow
from engine.plugins.loader import load_all_packs
from engine.registry import NodeRegistry

CONSTANT_NODE = """
class {name}:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{}}}}

    def run(self):
        return ({value},)


NODE_CLASS_MAPPINGS = {{"{name}": {name}}}
"""

SHOW_NODE = """
class Show:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    def run(self, text):
        return {"ui": {"text": [text]}}


NODE_CLASS_MAPPINGS = {"Show": Show}
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def load(*folders: Path):
    registry = NodeRegistry()
    report = load_all_packs(registry, folders, builtin_module=None)
    return registry, report


def run_constant(registry: NodeRegistry, node_type: str) -> str:
    prompt = {
        "1": {"class_type": node_type, "inputs": {}},
        "2": {"class_type": "Show", "inputs": {"text": ["1", 0]}},
    }
    result = Executor(registry).run(parse_api_workflow(prompt))
    assert result.ok, [str(e) for e in result.errors]
    return result.ui_outputs["2"]["text"][0]


def relative_pack(folder: Path, value: str) -> None:
    """A pack whose node comes from a subpackage, reached only through relative imports."""
    write(folder / "__init__.py", "from .nodes_impl.node import NODE_CLASS_MAPPINGS\nfrom . import helper\n")
    write(folder / "helper.py", f"VALUE = {value!r}\n")
    write(folder / "nodes_impl" / "__init__.py", "")
    write(
        folder / "nodes_impl" / "node.py",
        "from .. import helper\n" + CONSTANT_NODE.format(name="Relative", value="helper.VALUE"),
    )


def test_relative_imports_inside_a_pack_work_under_a_stable_module_name(tmp_path):
    custom = tmp_path / "custom_nodes"
    write(custom / "show.py", SHOW_NODE)
    relative_pack(custom / "My-Pack.v2", "from the subpackage")
    registry, report = load(custom)
    record = report.get("My-Pack.v2")
    assert record is not None and record.error is None, record and record.error
    assert record.module == "diffgraph_custom_nodes.My_Pack_v2"
    assert run_constant(registry, "Relative") == "from the subpackage"
    # Loading again (a new runtime, or the next run) gives the pack the same module name.
    _, again = load(custom)
    assert again.get("My-Pack.v2").module == record.module


def test_a_pack_of_the_same_name_elsewhere_imports_its_own_submodules(tmp_path):
    """Two folders each holding a pack "twin": each gets a name of its own in one load, and a later load
    of another "twin" does not reuse the submodules an earlier one left in sys.modules."""
    first, second = tmp_path / "a" / "custom_nodes", tmp_path / "b" / "custom_nodes"
    write(first / "show.py", SHOW_NODE)
    relative_pack(first / "twin", "first")
    relative_pack(second / "twin", "second")
    _, both = load(first, second)
    modules = [p.module for p in both.packs if p.name == "twin"]
    assert modules == ["diffgraph_custom_nodes.twin", "diffgraph_custom_nodes.twin_2"]
    assert [p.nodes for p in both.packs if p.name == "twin"][1] == []  # "Relative" is taken by the first
    registry, _ = load(first)
    assert run_constant(registry, "Relative") == "first"
    write(second / "show.py", SHOW_NODE)
    registry, _ = load(second)
    assert run_constant(registry, "Relative") == "second"


def test_a_failing_relative_import_reports_the_real_error(tmp_path):
    custom = tmp_path / "custom_nodes"
    write(custom / "broken" / "__init__.py", "from .absent_module import thing\n")
    _, report = load(custom)
    last_line = report.get("broken").error.strip().splitlines()[-1]
    assert last_line == "ModuleNotFoundError: No module named 'diffgraph_custom_nodes.broken.absent_module'"


def test_prestartup_scripts_run_before_any_pack_imports_and_their_errors_are_recorded(tmp_path):
    custom = tmp_path / "custom_nodes"
    marker = tmp_path / "prepared.txt"
    write(custom / "show.py", SHOW_NODE)
    # "a_reader" imports first (name order) and reads what "z_writer"'s prestartup script wrote.
    write(
        custom / "a_reader" / "__init__.py",
        f"from pathlib import Path\nSEEN = Path({str(marker)!r}).read_text()\n"
        + CONSTANT_NODE.format(name="Reader", value="SEEN"),
    )
    write(custom / "z_writer" / "__init__.py", CONSTANT_NODE.format(name="Writer", value="'w'"))
    write(
        custom / "z_writer" / "prestartup_script.py",
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('written early')\n",
    )
    write(custom / "m_failing" / "__init__.py", CONSTANT_NODE.format(name="Failing", value="'f'"))
    write(custom / "m_failing" / "prestartup_script.py", "raise RuntimeError('cannot prepare')\n")
    registry, report = load(custom)
    assert run_constant(registry, "Reader") == "written early"
    failing = report.get("m_failing")
    assert failing.loaded and failing.nodes == ["Failing"]
    assert "cannot prepare" in failing.node_errors["prestartup_script.py"]


def test_prepare_runs_before_prestartup_scripts_and_pack_imports(tmp_path):
    """Folders (input/, models/...) are made before any pack code runs: packs list them on import."""
    custom, made = tmp_path / "custom_nodes", tmp_path / "models" / "upscale_models"
    write(custom / "show.py", SHOW_NODE)
    write(custom / "lister" / "prestartup_script.py", f"import os\nos.listdir({str(made)!r})\n")
    write(
        custom / "lister" / "__init__.py",
        f"import os\nFOUND = str(os.listdir({str(made)!r}))\n"
        + CONSTANT_NODE.format(name="Lister", value="FOUND"),
    )
    registry = NodeRegistry()
    report = load_all_packs(registry, [custom], builtin_module=None, prepare=lambda: made.mkdir(parents=True))
    assert report.get("lister").node_errors == {}
    assert run_constant(registry, "Lister") == "[]"


def test_a_pack_that_registers_no_node_gets_a_warning(tmp_path):
    custom = tmp_path / "custom_nodes"
    write(custom / "helpers_only" / "__init__.py", "VALUE = 1\n")
    write(custom / "show.py", SHOW_NODE)
    _, report = load(custom)
    record = report.get("helpers_only")
    assert record.loaded and any("registers no node" in w for w in record.warnings)
    assert record.to_json()["warnings"] == record.warnings
    assert report.get("show").warnings == []


def test_nodes_json_prints_only_json_while_packs_print_and_fail(tmp_path, capsys):
    custom = tmp_path / "custom_nodes"
    write(custom / "chatty.py", "print('### chatty pack loaded ###')\n" + SHOW_NODE)
    write(custom / "broken.py", "raise ImportError('needs a library that is not installed')\n")
    assert main(["nodes", "--json", "--base-directory", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["Show"]["python_module"] == "chatty"
    assert "### chatty pack loaded ###" in captured.err
    assert "broken" in captured.err and "needs a library that is not installed" in captured.err


@pytest.fixture(autouse=True)
def _forget_test_packs():
    """Packs imported here stay out of later tests' sys.modules."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("diffgraph_custom_nodes"):
            del sys.modules[name]


def test_the_runtime_makes_the_data_folders_before_packs_import(tmp_path):
    """ComfyUI packs read input/ and write output/ or temp/ at import time: the runtime makes them first."""
    from engine.folders import Folders
    from engine.runtime import build_runtime

    folders = Folders.create(tmp_path / "base")
    seen = tmp_path / "seen.txt"
    checked = [str(folders.input), str(folders.output), str(folders.temp)]
    pack = (
        "import os\n"
        f"with open({str(seen)!r}, 'w') as out:\n"
        f"    out.write(','.join(str(os.path.isdir(p)) for p in {checked!r}))\n"
    ) + CONSTANT_NODE.format(name="Early", value="'x'")
    write(folders.custom_nodes[0] / "early.py", pack)
    runtime = build_runtime(folders, with_models=False)
    record = runtime.plugins.get("early")
    assert record.error is None and record.nodes == ["Early"]
    assert seen.read_text() == "True,True,True"
