"""Every example workflow in workflows/ (UI format and API twin) validates and runs end to end headless,
with tiny random checkpoints written under the file names the workflows expect and small input images.
Image sizes and step counts are made tiny by overriding inputs (the CLI's --set), not by editing files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.diffusion.checkpoints.loader import load_checkpoint
from engine.diffusion.models.controlnet import ControlNetModel
from engine.diffusion.models.upscalers import RRDBNet
from engine.folders import Folders
from engine.graph.loading import load_workflow_file
from engine.graph.validate import validate_workflow
from engine.graph.workflow import Link
from engine.imageio import png_metadata
from engine.runtime import build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NAMES = [
    "txt2img",
    "img2img",
    "inpaint",
    "outpaint",
    "hires_fix",
    "sdxl_txt2img",
    "sd_turbo",
    "area_composition",
    "lora_txt2img",
    "controlnet_canny",
    "img2img_esrgan_upscale",
]

CHECKPOINTS = {
    "v1-5-pruned-emaonly.safetensors": ("sd1", False),
    "512-inpainting-ema.safetensors": ("sd1", True),
    "sd_xl_base_1.0.safetensors": ("sdxl", False),
    "sd_turbo.safetensors": ("sd2", False),
}

# Per workflow: node id -> {input: value} overrides that keep the run tiny.
SMALL = {
    "txt2img": {"5": {"width": 64, "height": 64}, "3": {"steps": 2}},
    "img2img": {"6": {"steps": 2}},
    "inpaint": {"6": {"steps": 2}},
    "outpaint": {"3": {"top": 8, "bottom": 8, "feathering": 4}, "7": {"steps": 2}},
    "hires_fix": {
        "5": {"width": 64, "height": 64},
        "3": {"steps": 2},
        "10": {"width": 96, "height": 96},
        "11": {"steps": 2},
    },
    "sdxl_txt2img": {"5": {"width": 64, "height": 64}, "3": {"steps": 2}},
    "sd_turbo": {"2": {"width": 64, "height": 64}},
    "area_composition": {
        "5": {"width": 192, "height": 128},
        "12": {"width": 96, "height": 128, "x": 0},
        "13": {"width": 96, "height": 64, "x": 96},
        "3": {"steps": 2},
    },
    "lora_txt2img": {"5": {"width": 64, "height": 64}, "3": {"steps": 2}},
    "controlnet_canny": {"5": {"width": 64, "height": 64}, "3": {"steps": 2}},
    "img2img_esrgan_upscale": {"6": {"steps": 2}},
}


def _write_adapter_files(models: Path) -> None:
    """A LoRA, a ControlNet and an ESRGAN model, tiny and random, in their real file layouts, under the
    names the adapter workflows expect."""
    sd1 = load_checkpoint(models / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    g = torch.Generator().manual_seed(0)
    lora = {}
    for key, weight in sd1.unet.state_dict().items():
        if key.endswith(("attn1.to_q.weight", "attn2.to_v.weight")):
            name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
            lora[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 2, generator=g)
            lora[f"{name}.lora_down.weight"] = torch.randn(2, weight.shape[1], generator=g)
            lora[f"{name}.alpha"] = torch.tensor(2.0)
    (models / "loras").mkdir(parents=True, exist_ok=True)
    save_file(lora, models / "loras" / "example_lora.safetensors")

    control = ControlNetModel(sd1.unet.config)
    with torch.no_grad():
        for tensor in control.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.05)
    (models / "controlnet").mkdir(parents=True, exist_ok=True)
    weights = {f"control_model.{k}": v.contiguous() for k, v in control.state_dict().items()}
    save_file(weights, models / "controlnet" / "control_v11p_sd15_canny.safetensors")

    upscaler = RRDBNet(nf=8, nb=1, gc=4, scale=4)
    (models / "upscale_models").mkdir(parents=True, exist_ok=True)
    torch.save(upscaler.state_dict(), models / "upscale_models" / "RealESRGAN_x4plus.pth")


def _write_image(path: Path, size: int = 32, alpha_hole: bool = False) -> None:
    rng = np.random.default_rng(0)
    rgb = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    if alpha_hole:
        a = np.full((size, size, 1), 255, np.uint8)
        a[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0  # transparent = to be inpainted
        Image.fromarray(np.concatenate([rgb, a], axis=-1), "RGBA").save(path)
    else:
        Image.fromarray(rgb, "RGB").save(path)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The tiny model files, written once per module: read-only for the tests."""
    models = tmp_path_factory.mktemp("wf") / "models"
    for name, (family, inpaint) in CHECKPOINTS.items():
        write_tiny_checkpoint(models / "checkpoints" / name, family, seed=1, inpaint=inpaint)
    _write_adapter_files(models)
    return models


@pytest.fixture
def runtime(models_dir, tmp_path):
    """A runtime per test (its own output cache, output folder and inputs), so no test sees what an
    earlier one ran: with a shared cache a workflow that ran before writes no new PNG."""
    folders = Folders.create(tmp_path, models_directory=models_dir)
    folders.create_directories()
    _write_image(folders.input / "example.png")
    _write_image(folders.input / "yosemite_inpaint_example.png", alpha_hole=True)
    _write_image(folders.input / "yosemite_outpaint_example.png")
    return build_runtime(folders, load_custom_nodes=False)


def _load_small(runtime, path: Path, name: str):
    wf = load_workflow_file(path, runtime.registry)
    for node_id, values in SMALL[name].items():
        for key, value in values.items():
            wf.set_input(node_id, key, value)
    return wf


@pytest.mark.parametrize("name", NAMES)
def test_both_formats_validate_and_agree(runtime, name):
    ui = load_workflow_file(WORKFLOWS / f"{name}.json", runtime.registry)
    api = load_workflow_file(WORKFLOWS / f"{name}.api.json", runtime.registry)
    assert ui.ui_document is not None and api.ui_document is None
    assert ui.to_api() == {
        k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in api.to_api().items()
    }
    validate_workflow(api, runtime.registry)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_and_writes_png_with_graphs(runtime, name):
    wf = _load_small(runtime, WORKFLOWS / f"{name}.json", name)
    before = set(runtime.folders.output.rglob("*.png"))
    extra = {"extra_pnginfo": {"workflow": wf.ui_document}}
    result = runtime.executor.run(wf, extra_data=extra)
    assert result.ok, [str(e) for e in result.errors]
    written = sorted(set(runtime.folders.output.rglob("*.png")) - before)
    assert written, "no image written"
    meta = png_metadata(written[0])
    prompt = json.loads(meta["prompt"]) if isinstance(meta["prompt"], str) else meta["prompt"]
    workflow = json.loads(meta["workflow"]) if isinstance(meta["workflow"], str) else meta["workflow"]
    assert {n["class_type"] for n in prompt.values()} == {n.node_type for n in wf.nodes.values()}
    assert len(workflow["nodes"]) == len(wf.ui_document["nodes"])
    with Image.open(written[0]) as im:
        assert im.mode == "RGB" and min(im.size) >= 16


def test_comfyui_default_txt2img_runs_unchanged_in_both_formats(runtime):
    """The default graph (ids 3..9, ComfyUI's prompts and widget values) in both formats, only sized down."""
    api = json.loads((WORKFLOWS / "txt2img.api.json").read_text())
    assert api["4"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    assert api["3"]["inputs"]["seed"] == 156680208700286
    assert (api["3"]["inputs"]["steps"], api["3"]["inputs"]["cfg"]) == (20, 8.0)
    assert api["6"]["inputs"]["text"].startswith("beautiful scenery nature glass bottle landscape")
    assert api["7"]["inputs"]["text"] == "text, watermark"
    outputs = []
    # A second runtime for the UI file, so that it really runs instead of hitting the first one's cache.
    for file, rt in (
        ("txt2img.api.json", runtime),
        ("txt2img.json", build_runtime(runtime.folders, load_custom_nodes=False)),
    ):
        wf = _load_small(rt, WORKFLOWS / file, "txt2img")
        result = rt.executor.run(wf)
        assert result.ok, [str(e) for e in result.errors]
        outputs.append(result.output("8"))
    assert outputs[0].shape == outputs[1].shape and (outputs[0] == outputs[1]).all()


def _saved_pixels(runtime, wf) -> np.ndarray:
    before = set(runtime.folders.output.rglob("*.png"))
    result = runtime.executor.run(wf)
    assert result.ok, [str(e) for e in result.errors]
    (path,) = sorted(set(runtime.folders.output.rglob("*.png")) - before)
    return np.asarray(Image.open(path))


def test_lora_strength_changes_the_image_and_zero_matches_plain(runtime):
    images = {}
    for strength in (0.0, 1.0):
        wf = _load_small(runtime, WORKFLOWS / "lora_txt2img.api.json", "lora_txt2img")
        wf.set_input("10", "strength_model", strength)
        images[strength] = _saved_pixels(runtime, wf)
    plain = _load_small(runtime, WORKFLOWS / "lora_txt2img.api.json", "lora_txt2img")
    plain.set_input("3", "model", Link("4", 0))  # bypass the LoRA on the model side
    assert np.array_equal(_saved_pixels(runtime, plain), images[0.0])
    assert not np.array_equal(images[0.0], images[1.0])


def test_esrgan_workflow_upscales_by_the_detected_factor(runtime):
    wf = _load_small(runtime, WORKFLOWS / "img2img_esrgan_upscale.api.json", "img2img_esrgan_upscale")
    upscaled = _saved_pixels(runtime, wf)
    wf.set_input("11", "images", Link("7", 0))  # save the img2img result itself instead
    plain = _saved_pixels(runtime, wf)
    assert upscaled.shape[:2] == (plain.shape[0] * 4, plain.shape[1] * 4)
