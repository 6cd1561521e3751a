"""The headless CLI: run (API and UI format), --set, validate, nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli import main, parse_override

PACK = textwrap.dedent(
    """
    import time
    from engine import api

    @api.node("CliConst", inputs=[api.Int("value", 1, min=0, max=100)], outputs=["INT"])
    def const(value):
        return (value,)

    @api.node("CliSteps", inputs=[api.Input("v", "INT", force_input=True), api.Int("steps", 3, min=1, max=50)],
              outputs=["INT"])
    def steps(v, steps, context):
        for i in range(1, steps + 1):
            context.progress(i, steps)
        return (v * 2,)

    @api.node("CliWrite", inputs=[api.Input("v", "INT", force_input=True), api.String("name", "out")], output_node=True)
    def write(v, name, context):
        folder = context.folders.output
        (folder / f"{name}.txt").write_text(str(v))
        return api.NodeOutput(ui={"values": [v]})

    @api.node("CliFail", inputs=[api.Input("v", "INT", force_input=True)], outputs=["INT"])
    def fail(v):
        raise ValueError("this node always fails")

    NODES = [const, steps, write, fail]
    """
)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "cli_pack.py").write_text(PACK)
    return tmp_path


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


API = {
    "1": {"class_type": "CliConst", "inputs": {"value": 4}},
    "2": {"class_type": "CliSteps", "inputs": {"v": ["1", 0], "steps": 3}},
    "3": {"class_type": "CliWrite", "inputs": {"v": ["2", 0], "name": "result"}},
}


def test_run_api_workflow_with_overrides_and_progress(base, capsys):
    workflow = write_json(base / "wf.json", API)
    code = main(
        ["run", str(workflow), "--base-directory", str(base), "--set", "1.value=21", "--set", "3.name=custom"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (base / "output" / "custom.txt").read_text() == "42"
    assert "CliSteps (node 2)" in captured.err and "3/3" in captured.err
    assert "success" in captured.err


def test_run_ui_workflow(base, capsys):
    ui = {
        "nodes": [
            {
                "id": 1,
                "type": "CliConst",
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "INT", "type": "INT", "links": [1]}],
                "widgets_values": [5],
            },
            {
                "id": 2,
                "type": "CliWrite",
                "mode": 0,
                "inputs": [{"name": "v", "type": "INT", "link": 1}],
                "outputs": [],
                "widgets_values": ["from_ui"],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "INT"]],
        "version": 0.4,
    }
    code = main(["run", str(write_json(base / "ui.json", ui)), "--base-directory", str(base), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (base / "output" / "from_ui.txt").read_text() == "5"


def test_run_reports_validation_errors_with_exit_1(base, capsys):
    workflow = write_json(base / "wf.json", API)
    code = main(["run", str(workflow), "--base-directory", str(base), "--set", "1.value=500"])
    err = capsys.readouterr().err
    assert code == 1
    assert "node 1 (CliConst): input 'value': 500 is bigger than the maximum 100" in err


def test_run_with_one_invalid_output_warns_and_runs_the_valid_one(base, capsys):
    workflow = write_json(
        base / "wf.json",
        {
            **API,
            "4": {"class_type": "CliConst", "inputs": {"value": 500}},  # above max: output 5 fails
            "5": {"class_type": "CliWrite", "inputs": {"v": ["4", 0], "name": "skipped"}},
        },
    )
    code = main(["run", str(workflow), "--base-directory", str(base)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (base / "output" / "result.txt").read_text() == "8"
    assert not (base / "output" / "skipped.txt").exists()
    assert "warning: output node(s) 5 failed validation" in err
    assert "node 4 (CliConst): input 'value': 500 is bigger than the maximum 100" in err


def test_run_reports_execution_errors_with_exit_2(base, capsys):
    workflow = write_json(
        base / "wf.json",
        {**API, "2": {"class_type": "CliFail", "inputs": {"v": ["1", 0]}}},
    )
    code = main(["run", str(workflow), "--base-directory", str(base)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Node 2 (CliFail) failed: ValueError: this node always fails" in err


def test_bad_files_and_overrides_are_clear(base, capsys):
    (base / "bad.json").write_text("{not json")
    assert main(["run", str(base / "bad.json"), "--base-directory", str(base)]) == 2
    assert "bad.json is not valid JSON" in capsys.readouterr().err
    workflow = write_json(base / "wf.json", API)
    assert main(["run", str(workflow), "--base-directory", str(base), "--set", "9.value=1"]) == 2
    assert "no node with id '9'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="NODE_ID.INPUT=VALUE"):
        parse_override("value=3")
    assert parse_override("4.text=hello world") == ("4", "text", "hello world")
    assert parse_override("4.cfg=7.5") == ("4", "cfg", 7.5)


def test_validate_and_nodes(base, capsys):
    workflow = write_json(base / "wf.json", API)
    assert main(["validate", str(workflow), "--base-directory", str(base)]) == 0
    assert "ok: 3 node(s)" in capsys.readouterr().out
    bad = write_json(base / "bad.json", {"1": {"class_type": "CliWrite", "inputs": {"name": "x"}}})
    assert main(["validate", str(bad), "--base-directory", str(base), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["node_errors"]["1"]["errors"][0]["type"] == "required_input_missing"
    assert main(["nodes", "--json", "--base-directory", str(base)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["CliConst"]["input"]["required"]["value"][0] == "INT"
    assert main(["nodes", "--base-directory", str(base)]) == 0
    assert "CliSteps" in capsys.readouterr().out


@pytest.mark.slow
def test_console_script_is_installed(base):
    """The `diffgraph` entry point from pyproject runs (what README users type)."""
    script = Path(sys.executable).parent / "diffgraph"
    workflow = write_json(base / "wf.json", API)
    completed = subprocess.run(
        [str(script), "run", str(workflow), "--base-directory", str(base)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert (base / "output" / "result.txt").read_text() == "8"
