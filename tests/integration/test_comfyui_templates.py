"""ComfyUI's own workflow templates run headless in diffgraph.

The templates are UI-format workflows saved by ComfyUI (the `comfyui-workflow-templates` package, the version
ComfyUI 0.3.64 pins, installed by the test extra). Each listed template is loaded from the package file as
it is, tiny random model files are written under the names its loaders ask for
(tests/factories/template_models.py) and small images under the names its LoadImage nodes ask for; then
sizes and step counts are made small by overriding inputs (never by editing the file) and the workflow must
run without an error and write its images. `sd3.5_simple_example` runs with no override at all.

Templates for model families diffgraph does not have (video, audio, 3D, HiDream, Qwen, ...) are not listed;
docs/nodes.md says which of the supported families' templates are not covered yet and why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import comfyui_workflow_templates
import numpy as np
import pytest
from PIL import Image

from engine.folders import Folders
from engine.graph.loading import workflow_from_document
from engine.graph.workflow import Workflow
from engine.runtime import build_runtime
from tests.factories.template_models import TEMPLATE_MODELS, write_template_models
from tests.unit.diffusion.t5_fixtures import train_spiece

pytestmark = pytest.mark.slow

TEMPLATES = Path(comfyui_workflow_templates.__file__).parent / "templates"

RUNNING = [
    "default",
    "image2image",
    "lora",
    "lora_multiple",
    "embedding_example",
    "hiresfix_latent_workflow",
    "hiresfix_esrgan_workflow",
    "esrgan_example",
    "latent_upscale_different_prompt_model",
    "area_composition",
    "area_composition_square_area_for_subject",
    "inpaint_example",
    "inpaint_model_outpainting",
    "controlnet_example",
    "depth_controlnet",
    "mixing_controlnets",
    "2_pass_pose_worship",
    "gligen_textbox_example",
    "sdxl_simple_example",
    "sdxl_refiner_prompt_example",
    "sdxlturbo_example",
    "sdxl_revision_text_prompts",
    "sdxl_revision_zero_positive",
    "sd3.5_simple_example",
    "sd3.5_large_blur",
    "sd3.5_large_canny_controlnet_example",
    "sd3.5_large_depth",
    "flux_dev_checkpoint_example",
    "flux_schnell",
    "flux_dev_full_text_to_image",
    "flux_schnell_full_text_to_image",
    "flux1_krea_dev",
    "flux_redux_model_example",
    "flux_fill_inpaint_example",
    "flux_fill_outpaint_example",
    "flux_kontext_dev_basic",
    "flux_canny_model_example",
    "flux_depth_lora_example",
]

# What one tiny run may take: sizes are divided by this and rounded up to a multiple of 8.
SIZE_DIVISOR = 16
MAX_STEPS = 3
_SIZE_INPUTS = ("width", "height", "x", "y", "left", "top", "right", "bottom", "feathering")
_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")


def _document(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATES / f"{name}.json").read_text(encoding="utf-8"))


def _all_ui_nodes(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The template's nodes, those inside its subgraph definitions included."""
    nodes = list(document.get("nodes", []))
    for subgraph in document.get("definitions", {}).get("subgraphs", []):
        nodes.extend(subgraph.get("nodes", []))
    return nodes


def _widget_strings(document: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for node in _all_ui_nodes(document):
        values = node.get("widgets_values")
        if isinstance(values, list):
            out.extend((node["type"], v) for v in values if isinstance(v, str))
    return out


def _model_names(document: dict[str, Any]) -> set[str]:
    return {v for _, v in _widget_strings(document) if v.endswith(_MODEL_SUFFIXES) and v in TEMPLATE_MODELS}


def _image_names(document: dict[str, Any]) -> set[str]:
    return {v for t, v in _widget_strings(document) if t.startswith("LoadImage") and "." in v}


def _write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgba = (rng.random((64, 64, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[16:48, 16:48, 3] = 0  # a transparent hole: LoadImage's mask for the inpainting templates
    Image.fromarray(rgba, "RGBA").save(path)


def _small_size(value: int, minimum: float | None) -> int:
    if value <= 0:
        return value
    small = max(8, math.ceil(value / SIZE_DIVISOR / 8) * 8)
    return max(small, int(minimum or 0))


def shrink(workflow: Workflow, registry: Any) -> None:
    """Make the run tiny by overriding inputs: pixel sizes, positions and paddings / 16 (never below the
    input's minimum), total-pixel targets 0.01 MP, at most 3 steps (KSamplerAdvanced's start and end steps
    scaled with them)."""
    for node in workflow.nodes.values():
        inputs = node.inputs
        definition = registry.get(node.node_type)
        minimum = {spec.name: spec.min for spec in definition.inputs} if definition else {}
        for key in _SIZE_INPUTS:
            value = inputs.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                inputs[key] = _small_size(value, minimum.get(key))
        if isinstance(inputs.get("megapixels"), float):
            inputs["megapixels"] = 0.01  # ImageScaleToTotalPixels: 100x100 instead of 512x512
        steps = inputs.get("steps")
        if isinstance(steps, int) and steps > MAX_STEPS:
            inputs["steps"] = MAX_STEPS
            for key in ("start_at_step", "end_at_step"):
                value = inputs.get(key)
                if isinstance(value, int) and value < steps:
                    inputs[key] = round(value * MAX_STEPS / steps)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every model file the listed templates name, tiny, written once per module (read-only for tests)."""
    models = tmp_path_factory.mktemp("templates") / "models"
    names: set[str] = set()
    for template in RUNNING:
        names |= _model_names(_document(template))
    write_template_models(models, names)
    train_spiece(models / "text_encoders" / "t5_tokenizer" / "spiece.model")
    return models


def _runtime(models_dir: Path, base: Path, document: dict[str, Any]) -> Any:
    folders = Folders.create(base, models_directory=models_dir)
    folders.create_directories()
    for i, name in enumerate(sorted(_image_names(document))):
        # LoadImageOutput names carry ComfyUI's folder annotation ("x.png [output]")
        folder = folders.input
        for annotation, kind in ((" [output]", folders.output), (" [temp]", folders.temp)):
            if name.endswith(annotation):
                name, folder = name.removesuffix(annotation), kind
        _write_image(folder / name, seed=i)
    return build_runtime(folders, load_custom_nodes=False)


def _run(runtime: Any, workflow: Workflow) -> list[Path]:
    before = set(runtime.folders.output.rglob("*.png")) | set(runtime.folders.temp.rglob("*.png"))
    result = runtime.executor.run(workflow, extra_data={"extra_pnginfo": {"workflow": workflow.ui_document}})
    assert result.ok, [str(e) for e in result.errors]
    after = set(runtime.folders.output.rglob("*.png")) | set(runtime.folders.temp.rglob("*.png"))
    return sorted(after - before)


@pytest.mark.parametrize("template", RUNNING)
def test_template_runs_with_tiny_models(template: str, models_dir: Path, tmp_path: Path) -> None:
    document = _document(template)
    runtime = _runtime(models_dir, tmp_path, document)
    workflow = workflow_from_document(document, runtime.registry)
    shrink(workflow, runtime.registry)
    written = _run(runtime, workflow)
    assert written, "the template wrote no image"
    for path in written:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 0, f"{path.name} is a flat image"


def test_sd35_template_runs_unchanged(models_dir: Path, tmp_path: Path) -> None:
    """ComfyUI's SD3.5 example exactly as saved (1024x1024, 20 steps, its seed, cfg 4.01, euler /
    sgm_uniform), no input overridden."""
    document = _document("sd3.5_simple_example")
    runtime = _runtime(models_dir, tmp_path, document)
    workflow = workflow_from_document(document, runtime.registry)
    sampler = next(n for n in workflow.nodes.values() if n.node_type == "KSampler")
    assert (sampler.inputs["steps"], sampler.inputs["cfg"], sampler.inputs["scheduler"]) == (
        20,
        4.01,
        "sgm_uniform",
    )
    (path,) = _run(runtime, workflow)
    with Image.open(path) as image:
        assert image.size == (1024, 1024)
        workflow_chunk = json.loads(image.info["workflow"])
    assert len(workflow_chunk["nodes"]) == len(document["nodes"])
