"""The image-conditioning example workflows (workflows/unclip.api.json, style_model.api.json,
flux_redux.api.json) run headless end to end and write PNGs, with tiny files in the real layouts under the
names the workflows expect: an SD2.1-unCLIP-shaped .ckpt (image encoder inside), a T2I-Adapter style .pth
with a CLIP vision file, FLUX.1 Redux with a SigLIP file next to the tiny Flux dev files. The reference image
reaches the result: another image gives another picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.diffusion.models import flux
from engine.diffusion.vision.clip_vision import VisionConfig
from engine.folders import Folders
from engine.graph.loading import load_workflow_file
from engine.graph.validate import validate_workflow
from engine.runtime import build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.factories.flow_checkpoints import write_flow_file, write_flux_ae, write_text_encoder_files
from tests.factories.vision import (
    write_clip_vision,
    write_redux,
    write_style_adapter,
    write_unclip_checkpoint,
)
from tests.unit.diffusion.t5_fixtures import train_spiece

pytestmark = pytest.mark.slow

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SMALL: dict[str, dict[str, dict[str, Any]]] = {
    "unclip": {"7": {"width": 64, "height": 64}, "8": {"steps": 2}},
    "style_model": {"9": {"width": 64, "height": 64}, "10": {"steps": 2}},
    "flux_redux": {"5": {"width": 64, "height": 48}, "17": {"steps": 2}},
}
# Pixels of the tiny VAEs' output (downscale 2 instead of 8).
SIZES = {"unclip": (16, 16), "style_model": (16, 16), "flux_redux": (12, 16)}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("vision_wf") / "models"
    write_unclip_checkpoint(models / "checkpoints" / "sd21-unclip-h.ckpt", seed=1)
    write_tiny_checkpoint(models / "checkpoints" / "v1-5-pruned-emaonly.safetensors", "sd1", seed=2)
    write_clip_vision(models / "clip_vision" / "clip_vision_l.safetensors", VisionConfig.tiny(), seed=3)
    write_style_adapter(
        models / "style_models" / "t2iadapter_style_sd14v1.pth", width=32, context_dim=32, seed=4
    )
    siglip = VisionConfig.tiny(kind="siglip")
    write_clip_vision(models / "clip_vision" / "sigclip_vision_patch14_384.safetensors", siglip, seed=5)
    write_redux(models / "style_models" / "flux1-redux-dev.safetensors", redux_dim=32, txt_dim=40, seed=6)
    write_flow_file(
        models / "diffusion_models" / "flux1-dev.safetensors",
        "flux",
        config=flux.TINY,
        layout="diffusion_model",
        seed=2,
    )
    write_text_encoder_files(models / "text_encoders", "flux", seed=2)
    train_spiece(models / "text_encoders" / "t5_tokenizer" / "spiece.model")
    (models / "vae").mkdir(parents=True)
    write_flux_ae(models / "vae" / "ae.safetensors", seed=2)
    return models


def _write_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def runtime(models_dir: Path, tmp_path: Path) -> Any:
    folders = Folders.create(tmp_path, models_directory=models_dir)
    folders.create_directories()
    _write_image(folders.input / "example.png", 1)
    _write_image(folders.input / "other.png", 2)
    return build_runtime(folders, load_custom_nodes=False)


def _run(runtime: Any, name: str, **changes: dict[str, Any]) -> np.ndarray:
    wf = load_workflow_file(WORKFLOWS / f"{name}.api.json", runtime.registry)
    for node_id, values in {**SMALL[name], **changes}.items():
        for key, value in values.items():
            wf.set_input(node_id, key, value)
    validate_workflow(wf, runtime.registry)
    before = set(runtime.folders.output.rglob("*.png"))
    result = runtime.executor.run(wf)
    assert result.ok, [str(e) for e in result.errors]
    (path,) = sorted(set(runtime.folders.output.rglob("*.png")) - before)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


# The LoadImage node of each workflow.
IMAGE_NODE = {"unclip": "2", "style_model": "4", "flux_redux": "41"}


@pytest.mark.parametrize("name", list(SMALL))
def test_vision_workflow_runs_and_the_image_matters(runtime: Any, name: str) -> None:
    first = _run(runtime, name)
    assert first.shape == (*SIZES[name], 3) and first.std() > 0
    again = _run(runtime, name, **{IMAGE_NODE[name]: {"image": "other.png"}})
    assert not np.array_equal(first, again)
