"""Per-pack import times: measured for every pack (import and node registration, failures too), shown
slowest first by `diffgraph nodes` and the start-up log, and published in /diffgraph/plugins' JSON."""

from __future__ import annotations

import gc
import logging
import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.plugins.loader import load_all_packs
from engine.registry import NodeRegistry
from engine.startup import import_times_lines, log_import_times

# A classic pack whose import takes `delay` seconds, and whose node's INPUT_TYPES takes `schema_delay`
# seconds the first time it is read (at registration): both count in the pack's time, as in ComfyUI.
TIMED_PACK = """
import time

time.sleep({delay})
_first_read = [True]


class {name}Node:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        if _first_read[0]:
            _first_read[0] = False
            time.sleep({schema_delay})
        return {{"required": {{}}}}

    def run(self):
        return (1,)


NODE_CLASS_MAPPINGS = {{"{name}Node": {name}Node}}
"""


def write_pack(folder: Path, name: str, delay: float = 0.0, schema_delay: float = 0.0) -> Path:
    pack = folder / name
    pack.mkdir(parents=True)
    text = TIMED_PACK.format(name=name, delay=delay, schema_delay=schema_delay)
    (pack / "__init__.py").write_text(textwrap.dedent(text))
    return pack


@pytest.fixture
def packs(tmp_path):
    folder = tmp_path / "custom_nodes"
    write_pack(folder, "slow_import", delay=0.3)
    write_pack(folder, "slow_schema", schema_delay=0.3)
    write_pack(folder, "quick")
    broken = folder / "broken"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "import time\ntime.sleep(0.2)\nraise ImportError('needs a missing library')\n"
    )
    return folder


def test_every_pack_is_timed_with_its_registration_and_failures_too(packs):
    report = load_all_packs(NodeRegistry(), [packs], builtin_module=None)
    times = {pack.name: pack.import_seconds for pack in report.packs}
    assert times["slow_import"] >= 0.3
    assert times["slow_schema"] >= 0.3  # the first INPUT_TYPES() read happens while registering
    assert times["broken"] >= 0.2  # a failed import still says how long it took to fail
    assert times["quick"] < 0.25
    assert report.get("broken").to_json()["import_seconds"] == pytest.approx(times["broken"], abs=1e-3)


def test_the_built_in_pack_is_timed():
    report = load_all_packs(NodeRegistry())
    builtin = report.get("nodes")
    assert builtin is not None and builtin.builtin and builtin.import_seconds > 0


def test_import_times_block_lists_custom_packs_slowest_first_and_marks_failures(packs):
    report = load_all_packs(NodeRegistry(), [packs], builtin_module=None)
    lines = import_times_lines(report)
    assert lines[0].startswith("custom node packs, import times")
    order = [
        next(name for name in ("slow_import", "slow_schema", "broken", "quick") if f" {name} (" in line)
        for line in lines[1:]
    ]
    assert order[-1] == "quick" and order[2] == "broken"
    assert "FAILED to import" in lines[1 + order.index("broken")]
    assert "(1 node(s))" in lines[1 + order.index("quick")]
    assert import_times_lines(load_all_packs(NodeRegistry(), [], builtin_module=None)) == []


def test_start_up_log_has_one_record_per_pack_with_its_figures(packs, caplog):
    report = load_all_packs(NodeRegistry(), [packs], builtin_module=None)
    with caplog.at_level(logging.INFO, logger="diffgraph.plugins"):
        log_import_times(report)
    records = {r.pack: r for r in caplog.records if r.name == "diffgraph.plugins"}  # type: ignore[attr-defined]
    assert set(records) == {"slow_import", "slow_schema", "quick", "broken"}
    assert records["broken"].failed is True and records["quick"].nodes == 1  # type: ignore[attr-defined]
    assert records["slow_import"].seconds >= 0.3  # type: ignore[attr-defined]
    assert caplog.records[-1].pack == "quick"  # type: ignore[attr-defined]


def test_nodes_command_prints_the_block_and_leaves_the_collector_as_it_was(tmp_path, capsys):
    write_pack(tmp_path / "custom_nodes", "listed", delay=0.05)
    frozen = gc.get_freeze_count()
    assert main(["nodes", "--base-directory", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "custom node packs, import times" in err and " listed (1 node(s))" in err
    # Start-up pauses the collector; a command run in-process gives it back, never frozen.
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    with pytest.raises(SystemExit):
        main(["nodes", "--no-such-flag"])
    assert gc.isenabled()
