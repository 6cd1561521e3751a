"""FLUX.1 Fill and Kontext end to end: the Flux dev example workflow, run headless on tiny files, with
InpaintModelConditioning feeding a tiny Fill model (the mask reaches it: a full and an empty mask give
different images), and with ReferenceLatent + FluxKontextMultiReferenceLatentMethod feeding the dev model
(the reference changes the image; the placement method changes it again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.diffusion.models import flux
from engine.folders import Folders
from engine.graph.loading import workflow_from_document
from engine.runtime import build_runtime
from tests.factories.flow_checkpoints import write_flow_file, write_flux_ae, write_text_encoder_files
from tests.unit.diffusion.t5_fixtures import train_spiece

pytestmark = pytest.mark.slow
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("flux_edit") / "models"
    dm = models / "diffusion_models"
    write_flow_file(dm / "flux1-dev.safetensors", "flux", config=flux.TINY, layout="diffusion_model", seed=2)
    fill = flux.TINY.replace(in_channels=96)
    write_flow_file(dm / "flux1-fill-dev.safetensors", "flux", config=fill, layout="diffusion_model", seed=5)
    write_text_encoder_files(models / "text_encoders", "flux", seed=2)
    train_spiece(models / "text_encoders" / "t5_tokenizer" / "spiece.model")
    (models / "vae").mkdir(parents=True)
    write_flux_ae(models / "vae" / "ae.safetensors", seed=2)
    return models


def _base() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((WORKFLOWS / "flux_dev_txt2img.api.json").read_text())
    doc["5"]["inputs"].update(width=64, height=48)
    doc["17"]["inputs"].update(steps=2)
    doc["21"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0x3366CC},
    }
    return doc


def _run(models_dir: Path, tmp_path: Path, doc: dict[str, Any]) -> np.ndarray:
    folders = Folders.create(tmp_path, models_directory=models_dir)
    folders.create_directories()
    runtime = build_runtime(folders, load_custom_nodes=False)
    result = runtime.executor.run(workflow_from_document(doc, runtime.registry))
    assert result.ok, [str(e) for e in result.errors]
    (png,) = sorted(folders.output.rglob("*.png"))
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _fill(mask_value: float) -> dict[str, Any]:
    doc = _base()
    doc["12"]["inputs"]["unet_name"] = "flux1-fill-dev.safetensors"
    doc["22"] = {"class_type": "SolidMask", "inputs": {"value": mask_value, "width": 64, "height": 48}}
    doc["23"] = {
        "class_type": "InpaintModelConditioning",
        "inputs": {
            "positive": ["26", 0],
            "negative": ["26", 0],
            "vae": ["10", 0],
            "pixels": ["21", 0],
            "mask": ["22", 0],
            "noise_mask": False,
        },
    }
    doc["24"] = {"class_type": "BasicGuider", "inputs": {"model": ["30", 0], "conditioning": ["23", 0]}}
    doc["13"]["inputs"].update(guider=["24", 0], latent_image=["23", 2])
    return doc


def test_flux_fill_workflow_feeds_the_mask(models_dir: Path, tmp_path: Path) -> None:
    full = _run(models_dir, tmp_path / "a", _fill(1.0))
    empty = _run(models_dir, tmp_path / "b", _fill(0.0))
    assert full.shape == (48, 64, 3)  # the latent is the encoded 64x48 image
    assert np.abs(full - empty).max() > 2


def _kontext(method: str | None) -> dict[str, Any]:
    doc = _base()
    if method is None:
        return doc
    doc["22"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["21", 0], "vae": ["10", 0]}}
    doc["23"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["26", 0], "latent": ["22", 0]}}
    doc["24"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["23", 0], "latent": ["22", 0]}}
    doc["27"] = {
        "class_type": "FluxKontextMultiReferenceLatentMethod",
        "inputs": {"conditioning": ["24", 0], "reference_latents_method": method},
    }
    doc["28"] = {"class_type": "BasicGuider", "inputs": {"model": ["30", 0], "conditioning": ["27", 0]}}
    doc["13"]["inputs"]["guider"] = ["28", 0]
    return doc


def test_kontext_reference_latents_change_the_image(models_dir: Path, tmp_path: Path) -> None:
    plain = _run(models_dir, tmp_path / "a", _kontext(None))
    offset = _run(models_dir, tmp_path / "b", _kontext("offset"))
    index = _run(models_dir, tmp_path / "c", _kontext("index"))
    assert np.abs(offset - plain).max() > 2
    assert np.abs(offset - index).max() > 0  # two references: "offset" places the second one elsewhere
