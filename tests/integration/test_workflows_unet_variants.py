"""The UNet variants end to end: tiny files in the real key layouts (tests/factories/unet_variants.py) load
through CheckpointLoaderSimple / GLIGENLoader, and API workflows run headless and write PNGs.

- SD x4 upscaler: SD_4XUpscale_Conditioning + KSampler + VAEDecode gives an image 4x the input's size.
- InstructPix2Pix: InstructPixToPixConditioning feeds the input image's latent; another image, another result.
- SD2 depth: a txt2img workflow runs (no core node sets a depth map; see the unit tests for the depth input).
- GLIGEN: a box changes the picture; a GLIGEN file whose gates are zero gives the picture without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.diffusion.models.unet import UNetConfig
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.runtime import build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.factories.unet_variants import write_gligen_file, write_variant_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("variants") / "models"
    ck = models / "checkpoints"
    for variant in ("ip2p", "depth", "x4_upscaler"):
        write_variant_checkpoint(ck / f"{variant}.safetensors", variant, seed=3)
    write_tiny_checkpoint(ck / "sd1.safetensors", "sd1", seed=4)
    write_gligen_file(models / "gligen" / "gligen_tiny.safetensors", UNetConfig.tiny(), seed=5)
    write_gligen_file(models / "gligen" / "gligen_zero.safetensors", UNetConfig.tiny(), seed=5, gate=0.0)
    return models


def _image(path: Path, seed: int, size: tuple[int, int] = (16, 12)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def runtime(models_dir: Path, tmp_path: Path) -> Any:
    folders = Folders.create(tmp_path, models_directory=models_dir)
    folders.create_directories()
    _image(folders.input / "a.png", 1)
    _image(folders.input / "b.png", 2)
    return build_runtime(folders, load_custom_nodes=False)


def _run_to_png(runtime: Any, graph: dict[str, Any]) -> np.ndarray:
    before = set(runtime.folders.output.rglob("*.png"))
    result = runtime.executor.run(parse_api_workflow(graph))
    assert result.ok, [str(e) for e in result.errors]
    (path,) = sorted(set(runtime.folders.output.rglob("*.png")) - before)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _base(ckpt: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red house", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "variant"}},
    }


def _ksampler(positive: list[Any], negative: list[Any], latent: list[Any], seed: int = 7) -> dict[str, Any]:
    inputs = {"model": ["1", 0], "seed": seed, "steps": 2, "cfg": 3.0, "sampler_name": "euler"}
    inputs |= {"scheduler": "normal", "positive": positive, "negative": negative}
    inputs |= {"latent_image": latent, "denoise": 1.0}
    return {"class_type": "KSampler", "inputs": inputs}


def _x4_graph(noise_augmentation: float) -> dict[str, Any]:
    g = _base("x4_upscaler.safetensors")
    g["4"] = {"class_type": "LoadImage", "inputs": {"image": "a.png"}}
    g["5"] = {
        "class_type": "SD_4XUpscale_Conditioning",
        "inputs": {
            "images": ["4", 0],
            "positive": ["2", 0],
            "negative": ["3", 0],
            "scale_ratio": 4.0,
            "noise_augmentation": noise_augmentation,
        },
    }
    g["8"] = _ksampler(["5", 0], ["5", 1], ["5", 2])
    return g


def test_x4_upscaler_workflow_writes_an_image_four_times_the_input(runtime):
    image = _run_to_png(runtime, _x4_graph(0.0))
    assert image.shape == (48, 64, 3)  # the input is 16 x 12
    assert image.std() > 0
    # The noise level reaches the model (its class embedding and the noised low-res image).
    assert np.abs(_run_to_png(runtime, _x4_graph(0.3)) - image).max() > 0


def _ip2p_graph(image: str) -> dict[str, Any]:
    g = _base("ip2p.safetensors")
    g["4"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    g["5"] = {
        "class_type": "InstructPixToPixConditioning",
        "inputs": {"positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["4", 0]},
    }
    g["8"] = _ksampler(["5", 0], ["5", 1], ["5", 2])
    return g


def test_ip2p_workflow_uses_the_input_image(runtime):
    a = _run_to_png(runtime, _ip2p_graph("a.png"))
    b = _run_to_png(runtime, _ip2p_graph("b.png"))
    # 16 x 12 cropped to 16 x 8 (multiples of 8), encoded and decoded by the tiny 2x VAE
    assert a.shape == b.shape == (8, 16, 3)
    assert np.abs(a - b).max() > 0


def test_depth_model_workflow_runs(runtime):
    g = _base("depth.safetensors")
    g["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 24, "batch_size": 1}}
    g["8"] = _ksampler(["2", 0], ["3", 0], ["4", 0])
    image = _run_to_png(runtime, g)
    assert image.shape == (6, 8, 3)  # EmptyLatentImage makes (24 // 8, 32 // 8); the tiny VAE doubles it


def _gligen_graph(gligen: str | None) -> dict[str, Any]:
    g = _base("sd1.safetensors")
    g["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}}
    positive: list[Any] = ["2", 0]
    if gligen is not None:
        g["5"] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": gligen}}
        box = {"text": "a cat", "width": 64, "height": 48, "x": 32, "y": 16}
        g["6"] = {
            "class_type": "GLIGENTextBoxApply",
            "inputs": {
                "conditioning_to": ["2", 0],
                "clip": ["1", 1],
                "gligen_textbox_model": ["5", 0],
                **box,
            },
        }
        positive = ["6", 0]
    g["8"] = _ksampler(positive, ["3", 0], ["4", 0])
    return g


def test_gligen_box_changes_the_image_and_zero_gates_leave_it(runtime):
    plain = _run_to_png(runtime, _gligen_graph(None))
    boxed = _run_to_png(runtime, _gligen_graph("gligen_tiny.safetensors"))
    gated_off = _run_to_png(runtime, _gligen_graph("gligen_zero.safetensors"))
    assert plain.shape == boxed.shape == (32, 32, 3)
    assert np.abs(boxed - plain).max() > 0
    assert np.array_equal(gated_off, plain)
