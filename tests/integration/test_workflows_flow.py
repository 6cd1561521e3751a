"""The SD3.5 and FLUX.1 example workflows (workflows/*.api.json) run headless end to end and write PNGs, with
tiny random models written under the file names the workflows expect: an SD3.5 all-in-one checkpoint and
its fp8-scaled twin, Flux dev / schnell transformers, CLIP-L and T5-XXL text encoders and Flux's ae in
their folders, and a T5 vocabulary trained on the spot. Sizes and step counts are made tiny by overriding
inputs, not by editing the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.diffusion.models import flux, mmdit
from engine.folders import Folders
from engine.graph.loading import load_workflow_file, workflow_from_document
from engine.graph.validate import validate_workflow
from engine.imageio import png_metadata
from engine.runtime import build_runtime
from tests.factories.flow_checkpoints import write_flow_file, write_flux_ae, write_text_encoder_files
from tests.unit.diffusion.t5_fixtures import train_spiece

pytestmark = pytest.mark.slow

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SMALL: dict[str, dict[str, dict[str, Any]]] = {
    "sd3.5_txt2img": {"5": {"width": 64, "height": 48}, "3": {"steps": 2}},
    "sd3.5_fp8_txt2img": {"5": {"width": 64, "height": 48}, "3": {"steps": 2}, "13": {"layers": "1"}},
    "flux_dev_txt2img": {"5": {"width": 64, "height": 48}, "17": {"steps": 2}},
    "flux_schnell_txt2img": {"5": {"width": 64, "height": 48}, "3": {"steps": 2}},
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model files, written once per module: read-only for the tests."""
    models = tmp_path_factory.mktemp("flow_wf") / "models"
    ck = models / "checkpoints"
    write_flow_file(ck / "sd3.5_large.safetensors", "sd3", config=mmdit.TINY, seed=1)
    write_flow_file(
        ck / "sd3.5_large_fp8_scaled.safetensors", "sd3", config=mmdit.TINY, seed=1, fp8_scaled=True
    )
    dm = models / "diffusion_models"
    write_flow_file(dm / "flux1-dev.safetensors", "flux", config=flux.TINY, layout="diffusion_model", seed=2)
    write_flow_file(
        dm / "flux1-schnell.safetensors", "flux", config=flux.TINY_SCHNELL, layout="diffusion_model", seed=3
    )
    write_text_encoder_files(models / "text_encoders", "flux", seed=2)
    train_spiece(models / "text_encoders" / "t5_tokenizer" / "spiece.model")
    (models / "vae").mkdir(parents=True)
    write_flux_ae(models / "vae" / "ae.safetensors", seed=2)
    return models


@pytest.fixture
def runtime(models_dir: Path, tmp_path: Path) -> Any:
    """A runtime per test (its own output cache and output folder)."""
    folders = Folders.create(tmp_path, models_directory=models_dir)
    folders.create_directories()
    return build_runtime(folders, load_custom_nodes=False)


def _load_small(runtime: Any, name: str, **changes: dict[str, Any]) -> Any:
    wf = load_workflow_file(WORKFLOWS / f"{name}.api.json", runtime.registry)
    for node_id, values in {**SMALL[name], **changes}.items():
        for key, value in values.items():
            wf.set_input(node_id, key, value)
    return wf


def _run_to_png(runtime: Any, wf: Any) -> tuple[Path, np.ndarray]:
    before = set(runtime.folders.output.rglob("*.png"))
    result = runtime.executor.run(wf)
    assert result.ok, [str(e) for e in result.errors]
    (path,) = sorted(set(runtime.folders.output.rglob("*.png")) - before)
    with Image.open(path) as im:
        return path, np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.mark.parametrize("name", list(SMALL))
def test_ui_and_api_formats_agree(runtime: Any, name: str) -> None:
    ui = load_workflow_file(WORKFLOWS / f"{name}.json", runtime.registry)
    api = load_workflow_file(WORKFLOWS / f"{name}.api.json", runtime.registry)
    assert ui.ui_document is not None and api.ui_document is None
    assert ui.to_api() == api.to_api()
    validate_workflow(ui, runtime.registry)


@pytest.mark.parametrize("name", list(SMALL))
def test_flow_example_runs_headless_and_writes_a_png(runtime: Any, name: str) -> None:
    wf = _load_small(runtime, name)
    validate_workflow(wf, runtime.registry)
    path, pixels = _run_to_png(runtime, wf)
    # The tiny VAE halves twice less than the real one (downscale 2): 64x48 pixels -> 8x6 latent -> 16x12.
    assert pixels.shape == (12, 16, 3) and pixels.std() > 0
    prompt = png_metadata(path)["prompt"]
    prompt = json.loads(prompt) if isinstance(prompt, str) else prompt
    assert {n["class_type"] for n in prompt.values()} == {n.node_type for n in wf.nodes.values()}


def test_fp8_scaled_checkpoint_draws_nearly_what_its_source_draws(runtime: Any) -> None:
    _, plain = _run_to_png(runtime, _load_small(runtime, "sd3.5_txt2img"))
    wf = _load_small(runtime, "sd3.5_txt2img", **{"4": {"ckpt_name": "sd3.5_large_fp8_scaled.safetensors"}})
    _, fp8 = _run_to_png(runtime, wf)
    _, other_seed = _run_to_png(
        runtime, _load_small(runtime, "sd3.5_txt2img", **{"3": {"seed": 5, "steps": 2}})
    )
    diff = np.abs(plain - fp8)
    # Same weights, e4m3fn-rounded in the transformer and T5: far closer than another noise seed is.
    assert diff.max() > 0 and diff.mean() < 0.5 * np.abs(plain - other_seed).mean()


def test_flux_guidance_reaches_dev_but_not_schnell(runtime: Any) -> None:
    dev = [_load_small(runtime, "flux_dev_txt2img", **{"26": {"guidance": g}}) for g in (1.0, 6.0)]
    images = [_run_to_png(runtime, wf)[1] for wf in dev]
    assert not np.array_equal(images[0], images[1])
    # Schnell has no guidance embedding: a FluxGuidance on its prompt changes nothing.
    doc = json.loads((WORKFLOWS / "flux_schnell_txt2img.api.json").read_text())
    doc["6"]["inputs"]["text"] = "a bowl of fruit on a wooden table"
    _, plain = _run_to_png(runtime, _small_document(runtime, doc))
    doc["40"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 9.0}}
    doc["3"]["inputs"]["positive"] = ["40", 0]
    _, guided = _run_to_png(runtime, _small_document(runtime, doc))
    assert np.array_equal(plain, guided)


def _small_document(runtime: Any, doc: dict[str, Any]) -> Any:
    wf = workflow_from_document(doc, runtime.registry)
    for node_id, values in SMALL["flux_schnell_txt2img"].items():
        for key, value in values.items():
            wf.set_input(node_id, key, value)
    return wf
