"""SD3 ControlNets end to end: the SD3.5 example workflow with ControlNetLoader + ControlNetApplySD3 spliced
in runs headless on tiny files (an SD3 all-in-one checkpoint with 64-channel heads, and an SD3ControlNetModel
file in diffusers' layout as InstantX ships it) and writes a PNG; the control changes the image, strength 0
gives the image without it, and a missing VAE is reported by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.diffusion.models.mmdit import MMDiTConfig
from engine.folders import Folders
from engine.graph.loading import workflow_from_document
from engine.runtime import build_runtime
from tests.factories.flow_checkpoints import write_flow_file
from tests.factories.random_weights import randomize_
from tests.unit.diffusion.t5_fixtures import train_spiece

pytestmark = pytest.mark.slow
diffusers = pytest.importorskip("diffusers")

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
# hidden 128 = two 64-channel heads: ComfyUI's SD3 ControlNet rule reads the main depth (2) as hidden / 64.
MAIN = MMDiTConfig(
    hidden_size=128, depth=2, num_heads=2, pos_embed_max_size=8, adm_in_channels=24, context_in_dim=40
)


def _write_controlnet(path: Path) -> None:
    ref = diffusers.SD3ControlNetModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=1,
        attention_head_dim=64,
        num_attention_heads=2,
        joint_attention_dim=40,
        caption_projection_dim=128,
        pooled_projection_dim=24,
        out_channels=16,
        pos_embed_max_size=8,
    )
    randomize_(ref, 21)
    with torch.no_grad():  # residuals large enough to show in a 2-step image
        for block in ref.controlnet_blocks:
            block.weight.mul_(8.0)
    save_file({k: v.detach().contiguous() for k, v in ref.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("sd3_control") / "models"
    write_flow_file(models / "checkpoints" / "sd3.5_large.safetensors", "sd3", config=MAIN, seed=1)
    train_spiece(models / "text_encoders" / "t5_tokenizer" / "spiece.model")
    (models / "controlnet").mkdir(parents=True)
    _write_controlnet(models / "controlnet" / "sd3_canny_instantx.safetensors")
    return models


def _workflow(strength: float, *, with_vae: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((WORKFLOWS / "sd3.5_txt2img.api.json").read_text())
    doc["5"]["inputs"].update(width=64, height=48)
    doc["3"]["inputs"].update(steps=2)
    doc["20"] = {
        "class_type": "ControlNetLoader",
        "inputs": {"control_net_name": "sd3_canny_instantx.safetensors"},
    }
    doc["21"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 48, "height": 32, "batch_size": 1, "color": 0xE0E0E0},
    }
    apply = {
        "positive": ["6", 0],
        "negative": ["7", 0],
        "control_net": ["20", 0],
        "vae": ["4", 2],
        "image": ["21", 0],
        "strength": strength,
        "start_percent": 0.0,
        "end_percent": 1.0,
    }
    if with_vae:
        doc["22"] = {"class_type": "ControlNetApplySD3", "inputs": apply}
    else:
        apply.pop("vae")
        doc["22"] = {"class_type": "ControlNetApplyAdvanced", "inputs": apply}
    doc["3"]["inputs"]["positive"] = ["22", 0]
    doc["3"]["inputs"]["negative"] = ["22", 1]
    return doc


def _run(models_dir: Path, tmp_path: Path, doc: dict[str, Any]) -> tuple[Any, np.ndarray | None]:
    folders = Folders.create(tmp_path, models_directory=models_dir)
    folders.create_directories()
    runtime = build_runtime(folders, load_custom_nodes=False)
    result = runtime.executor.run(workflow_from_document(doc, runtime.registry))
    pngs = sorted(folders.output.rglob("*.png"))
    if not result.ok:
        return result, None
    with Image.open(pngs[-1]) as im:
        return result, np.asarray(im.convert("RGB")).astype(np.int16)


def test_sd3_controlnet_workflow_runs_and_changes_the_image(models_dir: Path, tmp_path: Path) -> None:
    _, controlled = _run(models_dir, tmp_path / "a", _workflow(1.0))
    _, off = _run(models_dir, tmp_path / "b", _workflow(0.0))
    doc = json.loads((WORKFLOWS / "sd3.5_txt2img.api.json").read_text())
    doc["5"]["inputs"].update(width=64, height=48)
    doc["3"]["inputs"].update(steps=2)
    _, plain = _run(models_dir, tmp_path / "c", doc)
    assert controlled is not None and off is not None and plain is not None
    assert controlled.shape == (12, 16, 3)  # the tiny VAE upsamples 2x
    assert np.array_equal(off, plain)  # strength 0 leaves the conditioning as it was
    assert np.abs(controlled - plain).max() > 2


def test_sd3_controlnet_without_vae_names_the_fix(models_dir: Path, tmp_path: Path) -> None:
    result, image = _run(models_dir, tmp_path, _workflow(1.0, with_vae=False))
    assert image is None
    assert "needs a VAE" in " ".join(str(e) for e in result.errors)
