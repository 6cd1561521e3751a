"""`comfy.utils` as packs use it: ProgressBar on the running node's progress, interrupts through
`comfy.model_management`, weights-only file loading, attribute paths, and the resizing helpers
(common_upscale's crop and bislerp, batch resizing, tiling) checked against hand-computed values."""

from __future__ import annotations

import importlib
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.execution.context import InterruptFlag
from engine.execution.events import NodeProgress
from engine.graph.api_format import parse_api_workflow
from tests.unit.compat.env_packs import PreviewSink, runtime_with_pack

PROGRESS_PACK = """
import comfy.utils
import comfy.model_management as mm
from PIL import Image


class Bar:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 4})}}

    def run(self, steps):
        bar = comfy.utils.ProgressBar(steps)
        bar.update(1)
        bar.update(2)
        bar.update_absolute(99, preview=("JPEG", Image.new("RGB", (64, 32), (0, 255, 0)), 16))
        return (bar.current,)


class Stopper:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"rounds": ("INT", {"default": 5})}}

    def run(self, rounds):
        done = 0
        for i in range(rounds):
            if i == 2:
                mm.interrupt_current_processing()
                assert mm.processing_interrupted()
            mm.throw_exception_if_processing_interrupted()
            done += 1
        return (done,)


class Catcher:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        mm.interrupt_current_processing()
        try:
            mm.throw_exception_if_processing_interrupted()
        except mm.InterruptProcessingException:
            mm.interrupt_current_processing(False)  # handled: the prompt goes on
            return ("caught",)
        return ("not interrupted",)


class ThreadedBar:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"items": ("INT", {"default": 3})}}

    def run(self, items):
        from concurrent.futures import ThreadPoolExecutor

        bar = comfy.utils.ProgressBar(items)
        with ThreadPoolExecutor(max_workers=1) as pool:  # updated from a worker thread
            list(pool.map(lambda _: bar.update(1), range(items)))
        return (items,)


NODE_CLASS_MAPPINGS = {
    "UtilsBar": Bar,
    "UtilsStopper": Stopper,
    "UtilsCatcher": Catcher,
    "UtilsThreadedBar": ThreadedBar,
}
"""


@pytest.fixture
def runtime(tmp_path):
    return runtime_with_pack(tmp_path, "utils_pack", PROGRESS_PACK)


@pytest.fixture
def utils(runtime):
    return importlib.import_module("comfy.utils")


def run_node(runtime, node: dict, **kwargs):
    return runtime.executor.run(parse_api_workflow({"1": node}), targets=["1"], **kwargs)


def test_progress_bar_reports_the_running_nodes_progress_with_preview(runtime):
    sink = PreviewSink()
    result = run_node(runtime, {"class_type": "UtilsBar", "inputs": {"steps": 4}}, sink=sink)
    assert result.ok and result.output("1") == 4  # update_absolute clamps to the total
    progress = [e for e in sink.events if isinstance(e, NodeProgress)]
    assert [(e.node_id, e.value, e.max) for e in progress] == [("1", 1, 4), ("1", 3, 4), ("1", 4, 4)]
    assert progress[0].preview is None
    image = progress[2].preview
    assert image.size == (16, 8) and image.getpixel((0, 0)) == (0, 255, 0)  # shrunk to max_size 16


def test_a_bar_updated_from_a_packs_worker_thread_reports_for_its_node(runtime):
    sink = PreviewSink()
    result = run_node(runtime, {"class_type": "UtilsThreadedBar", "inputs": {"items": 3}}, sink=sink)
    assert result.ok
    progress = [(e.node_id, e.value, e.max) for e in sink.events if isinstance(e, NodeProgress)]
    assert progress == [("1", 1, 3), ("1", 2, 3), ("1", 3, 3)]


def test_progress_outside_a_node_and_the_global_hook(utils):
    utils.ProgressBar(3).update(1)  # no running node: nothing to report, no error
    calls = []
    utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: calls.append((value, total, node_id))
    )
    bar = utils.ProgressBar(5, node_id="9")
    bar.update(2)
    bar.update_absolute(7, 10)
    assert calls == [(2, 5, "9"), (7, 10, "9")]


def test_an_interrupt_raised_through_model_management_stops_the_run(runtime):
    result = run_node(runtime, {"class_type": "UtilsStopper", "inputs": {"rounds": 5}})
    assert result.status == "interrupted" and not result.errors


def test_a_pack_can_catch_and_clear_comfyuis_interrupt_exception(runtime):
    flag = InterruptFlag()
    result = run_node(runtime, {"class_type": "UtilsCatcher", "inputs": {}}, interrupt=flag)
    assert result.ok and result.output("1") == "caught"
    assert not flag.is_set()  # the prompt's own flag was set and cleared through model_management


def test_interrupts_requested_outside_a_node(runtime):
    mm = importlib.import_module("comfy.model_management")
    assert issubclass(mm.InterruptProcessingException, Exception)
    mm.interrupt_current_processing()  # outside any node: remembered for the next check
    with pytest.raises(mm.InterruptProcessingException):
        mm.throw_exception_if_processing_interrupted()
    mm.throw_exception_if_processing_interrupted()  # raising cleared it, as ComfyUI's flag
    assert not mm.processing_interrupted()


def test_load_torch_file_reads_weights_only(utils, tmp_path):
    sd = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    utils.save_torch_file(sd, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
    loaded, metadata = utils.load_torch_file(str(tmp_path / "w.safetensors"), return_metadata=True)
    assert metadata == {"format": "pt"} and torch.equal(loaded["a.weight"], sd["a.weight"])
    torch.save({"state_dict": sd}, tmp_path / "wrapped.ckpt")
    assert set(utils.load_torch_file(str(tmp_path / "wrapped.ckpt"))) == {"a.weight", "b"}
    torch.save({"model": sd}, tmp_path / "single.pt")
    assert set(utils.load_torch_file(str(tmp_path / "single.pt"))) == {"a.weight", "b"}
    with open(tmp_path / "evil.pt", "wb") as handle:  # a pickle that would run code when unpickled
        pickle.dump({"x": Path("/")}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        utils.load_torch_file(str(tmp_path / "evil.pt"), safe_load=False)
    assert utils.calculate_parameters(sd) == 8 and utils.calculate_parameters(sd, "a.") == 6
    assert utils.weight_dtype(sd) == torch.float32


def test_state_dict_and_attribute_helpers(utils):
    sd = {"model.x": 1, "model.y": 2, "other": 3}
    assert utils.state_dict_prefix_replace(dict(sd), {"model.": "m."}, filter_keys=True) == {
        "m.x": 1,
        "m.y": 2,
    }
    assert utils.state_dict_prefix_replace(dict(sd), {"model.": ""}) == {"other": 3, "x": 1, "y": 2}
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    weight = utils.get_attr(net, "0.weight")
    assert weight is net[0].weight
    previous = utils.set_attr_param(net, "0.bias", torch.zeros(2))
    assert isinstance(net[0].bias, torch.nn.Parameter) and not net[0].bias.requires_grad
    assert previous is not net[0].bias
    utils.copy_to_param(net, "0.weight", torch.full((2, 2), 3.0))
    assert net[0].weight is weight and torch.equal(weight.data, torch.full((2, 2), 3.0))


def test_common_upscale_crops_the_centre_then_resizes(utils):
    samples = torch.arange(2 * 3 * 4 * 8, dtype=torch.float32).reshape(2, 3, 4, 8)
    out = utils.common_upscale(samples, 4, 4, "bilinear", "center")
    # aspect 2:1 -> 1:1 keeps columns 2..5, which bilinear at the same size returns unchanged
    assert torch.equal(out, samples[..., 2:6])
    assert utils.common_upscale(samples, 6, 2, "nearest-exact", "disabled").shape == (2, 3, 2, 6)
    area = utils.common_upscale(samples, 4, 2, "area", "disabled")
    assert torch.allclose(area, F.avg_pool2d(samples, 2))
    video = torch.rand(1, 4, 3, 8, 8)  # (B, C, T, H, W): frame by frame
    scaled = utils.common_upscale(video, 4, 4, "bilinear", "disabled")
    assert scaled.shape == (1, 4, 3, 4, 4)
    assert torch.allclose(scaled[:, :, 1], F.interpolate(video[:, :, 1], size=(4, 4), mode="bilinear"))
    image = torch.rand(1, 3, 8, 8)
    assert utils.common_upscale(image, 16, 12, "lanczos", "disabled").shape == (1, 3, 12, 16)


def test_bislerp_slerps_channel_vectors(utils):
    """Width 2 -> 3: the middle sample lies halfway between the two inputs (bilinear's coordinates); a
    slerp of the unit vectors (1, 0) and (0, 1) is (cos 45°, sin 45°), where a lerp would give (.5, .5)."""
    samples = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    out = utils.bislerp(samples, 3, 1)
    assert out.shape == (1, 2, 1, 3)
    half = math.sqrt(0.5)
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([half, half]), atol=1e-6)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(out[0, :, 0, 2], torch.tensor([0.0, 1.0]))
    same = torch.rand(1, 4, 5, 6) + 0.1
    assert torch.allclose(utils.common_upscale(same, 6, 5, "bislerp", "disabled"), same, atol=1e-5)


def test_batch_resizing(utils):
    t = torch.arange(3.0).reshape(3, 1)
    assert utils.repeat_to_batch_size(t, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert utils.repeat_to_batch_size(t, 2).flatten().tolist() == [0, 1]
    assert utils.repeat_to_batch_size(torch.zeros(1, 2, 3), 4, dim=1).shape == (1, 4, 3)
    assert utils.resize_to_batch_size(t, 6).flatten().tolist() == [0, 0, 1, 1, 2, 2]
    assert utils.resize_to_batch_size(torch.arange(5.0), 3).tolist() == [0, 2, 4]
    assert utils.resize_list_to_batch_size(["a", "b"], 4) == ["a", "a", "b", "b"]


def test_tiled_scale_matches_the_whole_image_result(utils):
    """A pointwise 2x nearest upscale tiled with overlaps gives exactly the untiled result (the feather
    weights are normalised away), and reports one progress step per tile."""
    image = torch.rand(1, 3, 40, 56)

    def double(x):
        return F.interpolate(x, scale_factor=2, mode="nearest")

    steps = utils.get_tiled_scale_steps(56, 40, 16, 16, 4)
    calls = []
    utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: calls.append(v))
    bar = utils.ProgressBar(steps)
    out = utils.tiled_scale(
        image, double, tile_x=16, tile_y=16, overlap=4, upscale_amount=2, out_channels=3, pbar=bar
    )
    assert torch.allclose(out, double(image), atol=1e-6)
    assert len(calls) == steps == 15  # 3 rows x 5 columns
