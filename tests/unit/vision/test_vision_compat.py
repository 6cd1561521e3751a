"""ComfyUI's comfy.clip_vision / comfy.sd for classic packs (the IPAdapter-style calls): clip_vision.load and
encode_image give what CLIPVisionLoader / CLIPVisionEncode give, isinstance(x, ClipVisionModel) recognises
the value, load_clipvision_from_sd reads an unCLIP checkpoint's encoder, comfy.sd.load_style_model and
load_checkpoint_guess_config(output_clipvision=True) load style models and unCLIP image encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.diffusion.vision.clip_vision import VisionConfig
from tests.factories.vision import write_clip_vision, write_style_adapter, write_unclip_checkpoint
from tests.unit.compat.nodes_packs import run, runtime_with_packs

PACK = """
import torch
import comfy.clip_vision
import comfy.sd
import comfy.utils
import folder_paths

class PackVision:
    RETURN_TYPES = ("CLIP_VISION", "CLIP_VISION_OUTPUT", "CLIP_VISION", "STYLE_MODEL", "CLIP_VISION")
    FUNCTION = "go"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def go(self, image):
        cv = comfy.clip_vision.load(folder_paths.get_full_path("clip_vision", "vit.safetensors"))
        assert isinstance(cv, comfy.clip_vision.ClipVisionModel) and cv.image_size == 28
        out = cv.encode_image(image, crop=True)
        assert isinstance(out, comfy.clip_vision.Output) and out["image_embeds"].shape == (1, 16)
        pixels = comfy.clip_vision.clip_preprocess(image, size=28, crop=True)
        assert pixels.shape == (1, 3, 28, 28)
        ckpt = folder_paths.get_full_path("checkpoints", "unclip.safetensors")
        sd = comfy.utils.load_torch_file(ckpt)
        from_sd = comfy.clip_vision.load_clipvision_from_sd(sd, prefix="embedder.model.visual.", convert_keys=True)
        style = comfy.sd.load_style_model(folder_paths.get_full_path("style_models", "style.safetensors"))
        _, _, _, guessed = comfy.sd.load_checkpoint_guess_config(ckpt, output_clipvision=True)
        return (cv, out, from_sd, style, guessed)

NODE_CLASS_MAPPINGS = {"PackVision": PackVision}
"""


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("compat_vision") / "models"
    write_clip_vision(models / "clip_vision" / "vit.safetensors", VisionConfig.tiny(), seed=1)
    write_unclip_checkpoint(models / "checkpoints" / "unclip.safetensors", seed=2)
    write_style_adapter(models / "style_models" / "style.safetensors", width=32, context_dim=32, seed=3)
    return models


def _encode(clip_vision: list) -> dict:
    return {
        "class_type": "CLIPVisionEncode",
        "inputs": {"clip_vision": clip_vision, "image": ["8", 0], "crop": "center"},
    }


def test_pack_uses_comfy_clip_vision(tmp_path, models_dir):
    runtime = runtime_with_packs(tmp_path, {"vision_pack": PACK}, models_dir)
    prompt = {
        # A grey IMAGE from a mask.
        "9": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 44, "height": 30}},
        "8": {"class_type": "MaskToImage", "inputs": {"mask": ["9", 0]}},
        "1": {"class_type": "PackVision", "inputs": {"image": ["8", 0]}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit.safetensors"}},
        "3": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": "unclip.safetensors"}},
        "4": _encode(["2", 0]),
        "5": _encode(["3", 3]),
        "6": _encode(["1", 2]),
        "7": _encode(["1", 4]),
    }
    result = run(runtime, prompt)
    pack_out = result.output("1", 1)
    assert torch.equal(pack_out.image_embeds, result.output("4").image_embeds)
    unclip = result.output("5").image_embeds
    assert torch.equal(result.output("6").image_embeds, unclip)
    assert torch.equal(result.output("7").image_embeds, unclip)
    assert result.output("1", 3).get_cond(pack_out).shape == (1, 4, 32)
