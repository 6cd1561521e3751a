"""ComfyUI packs reach diffgraph's built-in nodes through `nodes`: they subclass them (adding an input via
super().INPUT_TYPES()), call them inside their own nodes (CLIPTextEncode().encode, common_ksampler,
VAEDecode().decode...), and get the same values as the built-in nodes give in a workflow."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.runtime import build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.compat.nodes_packs import run, runtime_with_packs

CKPT = "tiny_sd1.safetensors"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("compat_nodes") / "models"
    write_tiny_checkpoint(models / "checkpoints" / CKPT, "sd1", seed=3)
    return models


def runtime_with(tmp_path: Path, models_dir: Path, packs: dict[str, str] | None = None):
    return runtime_with_packs(tmp_path, packs or {}, models_dir)


def builtin_txt2img(loader: dict) -> dict:
    """The default txt2img graph, tiny: loader -> two prompts -> KSampler -> VAEDecode."""
    return {
        "4": loader,
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 42,
                "steps": 2,
                "cfg": 5.0,
                "sampler_name": "euler_ancestral",
                "scheduler": "karras",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


SUBCLASS_PACK = """
import nodes

class ScaledCheckpointLoader(nodes.CheckpointLoaderSimple):
    @classmethod
    def INPUT_TYPES(cls):
        declared = super().INPUT_TYPES()
        declared["required"]["label"] = ("STRING", {"default": "mine"})
        return declared

    CATEGORY = "test"

    def load_checkpoint(self, ckpt_name, label):
        model, clip, vae = super().load_checkpoint(ckpt_name)
        return (model, clip, vae)

NODE_CLASS_MAPPINGS = {"ScaledCheckpointLoader": ScaledCheckpointLoader}
"""


def test_a_pack_subclassing_a_builtin_loader_registers_and_gives_the_builtin_result(tmp_path, models_dir):
    runtime = runtime_with(tmp_path, models_dir, {"subclass_pack": SUBCLASS_PACK})
    info = runtime.registry.node_info("ScaledCheckpointLoader")
    assert list(info["input"]["required"]) == ["ckpt_name", "label"]
    assert info["input"]["required"]["ckpt_name"][0] == [CKPT]  # the folder listing, as the built-in's
    assert info["output"] == ["MODEL", "CLIP", "VAE"]
    mine = run(
        runtime,
        builtin_txt2img(
            {"class_type": "ScaledCheckpointLoader", "inputs": {"ckpt_name": CKPT, "label": "x"}}
        ),
    )
    reference = run(
        build_runtime(runtime.folders, load_custom_nodes=False),
        builtin_txt2img({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}),
    )
    assert torch.equal(mine.output("8"), reference.output("8"))


CALLING_PACK = """
import nodes

class PackTxt2Img:
    RETURN_TYPES = ("IMAGE", "LATENT")
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": ""}), "seed": ("INT", {"default": 0})}}

    def run(self, ckpt_name, seed):
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)
        positive = nodes.CLIPTextEncode().encode(clip, "a red fox")[0]
        negative = nodes.CLIPTextEncode().encode(clip=clip, text="blurry")[0]
        latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        sampled = nodes.common_ksampler(
            model, seed, 2, 5.0, "euler_ancestral", "karras", positive, negative, latent, denoise=1.0
        )[0]
        image = nodes.VAEDecode().decode(vae, sampled)[0]
        again = nodes.NODE_CLASS_MAPPINGS["KSampler"]().sample(
            model, seed, 2, 5.0, "euler_ancestral", "karras", positive, negative, latent
        )[0]
        assert torch.equal(again["samples"], sampled["samples"])
        return (image, sampled)

import torch
NODE_CLASS_MAPPINGS = {"PackTxt2Img": PackTxt2Img}
"""


def test_builtin_nodes_called_from_pack_code_give_the_workflow_result(tmp_path, models_dir):
    runtime = runtime_with(tmp_path, models_dir, {"calling_pack": CALLING_PACK})
    mine = run(runtime, {"1": {"class_type": "PackTxt2Img", "inputs": {"ckpt_name": CKPT, "seed": 42}}})
    reference = run(
        runtime, builtin_txt2img({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}})
    )
    assert torch.equal(mine.output("1", 0), reference.output("8"))
    assert torch.equal(mine.output("1", 1)["samples"], reference.output("3")["samples"])


PREVIEW_PACK = """
import nodes
import folder_paths

class PreviewTwice(nodes.PreviewImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT"}}

    FUNCTION = "twice"

    def twice(self, images, prompt=None):
        first = self.save_images(images, "twice", prompt)
        self.prefix_append = "_again"
        second = self.save_images(images, "twice", prompt)
        return {"ui": {"images": first["ui"]["images"] + second["ui"]["images"]}}

class SaveToSubfolder(nodes.SaveImage):
    def __init__(self):
        super().__init__()
        self.compress_level = 9

class PreviewMask(nodes.PreviewImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",)}}

    FUNCTION = "show"

    def show(self, mask):
        return self.save_images(mask, "mask")  # ComfyUI saves a (B, H, W) mask as grayscale PNGs

NODE_CLASS_MAPPINGS = {"PreviewTwice": PreviewTwice, "SaveToSubfolder": SaveToSubfolder, "PreviewMask": PreviewMask}
"""


def test_save_and_preview_subclasses_write_where_their_attributes_say(tmp_path, models_dir):
    runtime = runtime_with(tmp_path, models_dir, {"preview_pack": PREVIEW_PACK})
    assert (
        runtime.registry.node_info("SaveToSubfolder")["input"]["required"]["filename_prefix"][1]["default"]
        == "ComfyUI"
    )
    result = run(
        runtime,
        {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 4, "batch_size": 2, "color": 255},
            },
            "2": {"class_type": "PreviewTwice", "inputs": {"images": ["1", 0]}},
            "3": {
                "class_type": "SaveToSubfolder",
                "inputs": {"images": ["1", 0], "filename_prefix": "sub/pic"},
            },
            "4": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 6, "height": 5}},
            "5": {"class_type": "PreviewMask", "inputs": {"mask": ["4", 0]}},
        },
    )
    previews = result.ui_outputs["2"]["images"]
    assert [p["type"] for p in previews] == ["temp"] * 4
    assert previews[0]["filename"].startswith("twice_temp_") and previews[2]["filename"].startswith(
        "twice_again"
    )
    assert all((runtime.folders.temp / p["filename"]).is_file() for p in previews)
    saved = result.ui_outputs["3"]["images"]
    assert saved == [
        {"filename": "pic_00001_.png", "subfolder": "sub", "type": "output"},
        {"filename": "pic_00002_.png", "subfolder": "sub", "type": "output"},
    ]
    assert (runtime.folders.output / "sub" / "pic_00002_.png").is_file()
    (mask_file,) = result.ui_outputs["5"]["images"]
    with Image.open(runtime.folders.temp / mask_file["filename"]) as picture:
        assert (picture.mode, picture.size, picture.getpixel((0, 0))) == ("L", (6, 5), 127)


def test_builtin_classes_carry_comfyui_attributes(tmp_path, models_dir):
    runtime = runtime_with(tmp_path, models_dir)
    nodes = importlib.import_module("nodes")  # ComfyUI's `nodes` of the runtime just built (env module)

    assert nodes.MAX_RESOLUTION == 16384
    assert nodes.ImageScale.upscale_methods == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert nodes.ImageScale.crop_methods == ["disabled", "center"]
    assert nodes.KSampler.FUNCTION == "sample" and nodes.KSampler.RETURN_TYPES == ("LATENT",)
    assert nodes.LoraLoader.FUNCTION == "load_lora" and nodes.VAEDecode.FUNCTION == "decode"
    assert nodes.SaveImage.OUTPUT_NODE is True
    assert nodes.SaveImage().type == "output" and nodes.PreviewImage().type == "temp"
    assert nodes.PreviewImage().compress_level == 1
    assert issubclass(nodes.PreviewImage, nodes.SaveImage)
    samplers = nodes.KSampler.INPUT_TYPES()["required"]["sampler_name"][0]
    assert samplers == runtime.services["samplers"].sampler_names()
    image = torch.rand(1, 6, 10, 3)
    (scaled,) = nodes.ImageScale().upscale(image, "bilinear", 5, 3, "disabled")
    assert scaled.shape == (1, 3, 5, 3)
    (inverted,) = nodes.ImageInvert().invert(image)
    assert torch.allclose(inverted, 1 - image)
    # Every class of ComfyUI's nodes.py imports; one diffgraph lacks says so when it is called.
    missing = [name for name in ("unCLIPConditioning", "StyleModelApply") if name not in runtime.registry]
    for name in missing:
        cls = getattr(nodes, name)
        with pytest.raises(NotImplementedError, match=name):
            getattr(cls(), cls.FUNCTION)()
