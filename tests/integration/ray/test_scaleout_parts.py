"""The Ray executor's pure-Python parts, without Ray: routing choices, per-client ordering of relayed
messages, output files shipped from a worker's staging folders and landed under the server's counter.
Plus: the server and CLI modules do not import Ray, and `--executor ray` is an option of `serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.folders import Folders
from engine.scaleout.outputs import OutputLander, ShippedFile, Staging
from engine.scaleout.relay import ClientSequencer
from engine.scaleout.router import BUSY, IDLE, Pending, RoutingStats, WorkerSlot, choose, needed_models, plan

REPO = Path(__file__).resolve().parents[3]


def test_needed_models_are_the_model_files_a_prompt_names():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/base.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.SAFETENSORS", "model": ["1", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat, not a model", "clip": ["1", 1]}},
        "4": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x4.pth"}},
        "5": "not a node",
    }
    assert needed_models(prompt) == {"base.safetensors", "style.SAFETENSORS", "x4.pth"}


def _slot(index: int, *, device=(), ram=(), state=IDLE, prompts=0) -> WorkerSlot:
    return WorkerSlot(index, state=state, on_device=frozenset(device), in_ram=frozenset(ram), prompts=prompts)


def test_choose_prefers_the_idle_worker_holding_the_models():
    slots = [
        _slot(0, prompts=0),
        _slot(1, ram=["a.safetensors"], prompts=9),
        _slot(2, device=["a.safetensors"]),
    ]
    assert choose(slots, {"a.safetensors"}).index == 2  # on the device beats in RAM beats nothing
    slots[2].state = BUSY
    assert choose(slots, {"a.safetensors"}).index == 1  # busy workers are never chosen
    assert choose(slots, {"a.safetensors"}, exclude={1}).index == 0
    assert choose(slots, {"a.safetensors"}, affinity=False).index == 0  # the baseline: fewest prompts
    slots[0].state = slots[1].state = BUSY
    assert choose(slots, {"a.safetensors"}) is None


def test_choose_spreads_different_models_over_the_workers():
    # Neither holds b: the one holding nothing else takes it, although it has run more prompts.
    slots = [_slot(0, ram=["a.safetensors"], prompts=1), _slot(1, prompts=5)]
    assert choose(slots, {"b.safetensors"}).index == 1


def test_plan_lets_a_later_prompt_go_first_to_keep_models_hot():
    a, b = frozenset({"a.safetensors"}), frozenset({"b.safetensors"})
    idle_a, busy_b = _slot(0, ram=["a.safetensors"]), _slot(1, ram=["b.safetensors"], state=BUSY)
    slots = [idle_a, busy_b]
    # The head needs b, which the busy worker has hot: the idle worker takes the next prompt needing a.
    assert plan(slots, [Pending(b), Pending(b), Pending(a)]) == (idle_a, 2)
    assert plan(slots, [Pending(b), Pending(a)], affinity=False) == (idle_a, 0)
    assert plan(slots, [Pending(b, skipped=4), Pending(a)]) == (idle_a, 0)  # waited enough
    assert plan(slots, [Pending(b), Pending(a, exclude=frozenset({0}))]) == (idle_a, 0)
    assert plan(slots, [Pending(b), Pending(b)]) == (idle_a, 0)  # nothing better to do: no idling
    c = frozenset({"c.safetensors"})
    assert plan(slots, [Pending(c), Pending(a)]) == (idle_a, 0)  # nobody holds c: no reason to wait
    busy_b.state = IDLE
    assert plan(slots, [Pending(b), Pending(a)]) == (busy_b, 0)
    assert plan(slots, []) is None


def test_routing_stats_count_hits():
    stats = RoutingStats()
    holder = _slot(0, ram=["a.safetensors"])
    assert stats.record(holder, {"a.safetensors"}) is True
    assert stats.record(holder, {"a.safetensors", "b.safetensors"}) is False
    assert stats.record(holder, set()) is False  # names no model: not counted in the hit rate
    assert stats.as_dict() == {
        "dispatched": 3,
        "with_models": 2,
        "hits": 1,
        "hit_rate": 0.5,
        "per_worker": {0: 3},
    }


class RecordingHub:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, str | None]] = []

    def post(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        self.sent.append((event, data["n"], sid))

    def post_binary(self, payload: bytes, sid: str | None = None) -> None:
        self.sent.append(("binary", payload, sid))


def test_a_clients_later_prompt_waits_for_its_earlier_one():
    hub = RecordingHub()
    sequencer = ClientSequencer(hub)
    first, second = sequencer.open("p1", "alice"), sequencer.open("p2", "alice")
    other = sequencer.open("p3", "bob")
    second.post("progress", {"n": 21}, "alice")
    second.post_binary(b"frame", "alice")
    other.post("progress", {"n": 31}, "bob")  # another client: never held up
    first.post("progress", {"n": 11}, "alice")
    assert hub.sent == [("progress", 31, "bob"), ("progress", 11, "alice")]
    second.post("executing", {"n": 22}, "alice")
    sequencer.close("p1")  # alice's first prompt is done: the second's messages follow, in order
    assert hub.sent[2:] == [
        ("progress", 21, "alice"),
        ("binary", b"frame", "alice"),
        ("executing", 22, "alice"),
    ]
    second.post("executing", {"n": 23}, "alice")  # now live
    assert hub.sent[-1] == ("executing", 23, "alice")
    assert sequencer.open("p2", "alice") is second  # a re-queued prompt keeps its gate and its place


def test_a_later_prompt_that_finished_first_is_released_whole():
    hub = RecordingHub()
    sequencer = ClientSequencer(hub)
    first, second, third = (sequencer.open(f"p{n}", None) for n in (1, 2, 3))
    second.post("executing", {"n": 2})
    sequencer.close("p2")
    third.post("executing", {"n": 3})
    assert hub.sent == []
    first.post("executing", {"n": 1})
    sequencer.close("p1")
    assert [n for _, n, _ in hub.sent] == [1, 2, 3]
    assert sequencer.held_count() == 0


def _folders(base: Path) -> Folders:
    folders = Folders.create(base)
    folders.create_directories()
    return folders


def test_staged_files_ship_once_and_keep_counting(tmp_path):
    staging = Staging(_folders(tmp_path / "worker"))
    out = staging.roots["output"]
    (out / "sub").mkdir()
    (out / "sub" / "img_00001_.png").write_bytes(b"png-1")
    (out / "side.latent").write_bytes(b"latent")
    ui = {"images": [{"filename": "img_00001_.png", "subfolder": "sub", "type": "output"}]}
    assert staging.take(ui) == [ShippedFile("output", "sub", "img_00001_.png", b"png-1")]
    assert staging.take(ui) == []  # shipped once
    # A zero-byte placeholder stays, so the save node's next counter is 2, never 1 again.
    assert (out / "sub" / "img_00001_.png").read_bytes() == b""
    assert staging.sweep() == [ShippedFile("output", "", "side.latent", b"latent")]
    assert staging.take({"images": [{"filename": "../../escape.png", "type": "output"}]}) == []


def test_landed_files_take_the_servers_next_counter_and_ui_names_follow(tmp_path):
    folders = _folders(tmp_path / "server")
    (folders.output / "ray_00007_.png").write_bytes(b"already here")
    lander = OutputLander(folders)
    batch = [ShippedFile("output", "", f"ray_0000{n}_.png", f"w{n}".encode()) for n in (1, 2)]
    lander.land("w0", batch)
    lander.land("w1", [ShippedFile("output", "", "ray_00001_.png", b"other worker")])
    assert (folders.output / "ray_00008_.png").read_bytes() == b"w1"
    assert (folders.output / "ray_00009_.png").read_bytes() == b"w2"  # a batch stays consecutive
    assert (folders.output / "ray_00010_.png").read_bytes() == b"other worker"
    ui = {"images": [{"filename": "ray_00002_.png", "subfolder": "", "type": "output"}], "text": ["x"]}
    assert lander.rewrite("w0", ui) == {
        "images": [{"filename": "ray_00009_.png", "subfolder": "", "type": "output"}],
        "text": ["x"],
    }
    assert lander.rewrite("w1", ui) == ui  # names are per worker
    lander.forget("w0")
    assert lander.rewrite("w0", ui) == ui
    lander.land(
        "w0", [ShippedFile("temp", "", "notes.txt", b"1"), ShippedFile("temp", "", "notes.txt", b"2")]
    )
    assert (folders.temp / "notes.txt").read_bytes() == b"1" and (
        folders.temp / "notes_1.txt"
    ).read_bytes() == b"2"
    with pytest.raises(ValueError, match="outside"):
        lander.land("w0", [ShippedFile("output", "../..", "x.png", b"")])


@pytest.mark.slow
def test_the_server_and_cli_do_not_import_ray():
    code = (
        "import sys\n"
        "import engine.server.app, engine.server.worker, engine.cli\n"
        "from engine.cli import build_parser\n"
        "args = build_parser().parse_args(['serve', '--executor', 'ray', '--workers', '3', '--ray-address', 'auto'])\n"
        "assert (args.executor, args.workers, args.ray_address) == ('ray', 3, 'auto')\n"
        "assert build_parser().parse_args(['serve']).executor == 'embedded'\n"
        "assert 'ray' not in sys.modules, 'ray imported by the server'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
