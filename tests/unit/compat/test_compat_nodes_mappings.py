"""nodes.NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS / EXTENSION_WEB_DIRS are live views of the
runtime: packs see the built-ins and the packs loaded before them, a write registers a node, and every
comfy_extras module packs import gives ComfyUI's names."""

from __future__ import annotations

import importlib

import torch

from engine.folders import Folders
from engine.runtime import build_runtime
from tests.unit.compat.nodes_packs import run, write_pack

CONSTANT = """
class {name}:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{}}}}

    def run(self):
        return ({value!r},)
"""

FIRST_PACK = (
    CONSTANT.format(name="FirstNode", value="first")
    + """
NODE_CLASS_MAPPINGS = {"FirstNode": FirstNode}
NODE_DISPLAY_NAME_MAPPINGS = {"FirstNode": "The First"}
WEB_DIRECTORY = "./js"
"""
)

SECOND_PACK = (
    CONSTANT.format(name="Written", value="written")
    + """
import nodes

SEEN = {
    "first_is_pack_class": nodes.NODE_CLASS_MAPPINGS["FirstNode"].__module__.endswith("first_pack"),
    "ksampler_function": nodes.NODE_CLASS_MAPPINGS["KSampler"].FUNCTION,
    "title": nodes.NODE_DISPLAY_NAME_MAPPINGS.get("FirstNode"),
    "web": dict(nodes.EXTENSION_WEB_DIRS),
    "has_second": "SecondNode" in nodes.NODE_CLASS_MAPPINGS,
}
nodes.NODE_CLASS_MAPPINGS["Written"] = Written           # a pack registering a node by writing here
nodes.NODE_CLASS_MAPPINGS["KSampler"] = Written          # ... and trying to replace a built-in one
nodes.NODE_DISPLAY_NAME_MAPPINGS["Written"] = "Written Here"

class Report:
    RETURN_TYPES = ()
    FUNCTION = "run"
    CATEGORY = "test"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return {"ui": {"seen": [SEEN], "written": [nodes.NODE_CLASS_MAPPINGS["Written"] is Written],
                       "title": [nodes.NODE_DISPLAY_NAME_MAPPINGS["Written"]]}}

NODE_CLASS_MAPPINGS = {"Report": Report}
"""
)


def test_mappings_are_live_and_a_write_registers_a_node(tmp_path):
    first = write_pack(tmp_path, "first_pack", FIRST_PACK)
    (first / "js").mkdir()
    write_pack(tmp_path, "second-pack", SECOND_PACK)
    runtime = build_runtime(Folders.create(tmp_path), with_models=False)
    assert all(p.error is None for p in runtime.plugins.packs), [p.error for p in runtime.plugins.packs]
    seen = run(runtime, {"1": {"class_type": "Report", "inputs": {}}}).ui_outputs["1"]
    assert seen["seen"][0] == {
        "first_is_pack_class": True,
        "ksampler_function": "sample",
        "title": "The First",
        "web": {"first_pack": str((first / "js").resolve())},
        "has_second": False,
    }
    assert seen["written"] == [True] and seen["title"] == ["Written Here"]
    # The written class is a registered node type; the built-in KSampler was not replaced.
    assert run(runtime, {"2": {"class_type": "Written", "inputs": {}}}).output("2") == "written"
    assert runtime.registry.source_of("KSampler") == "nodes"
    assert runtime.registry.source_of("Written") == "second-pack"  # the pack's folder name
    nodes = importlib.import_module("nodes")  # ComfyUI's `nodes` of this runtime (env module)
    assert set(nodes.NODE_CLASS_MAPPINGS) == {d.node_type for d in runtime.registry}
    assert len(nodes.NODE_CLASS_MAPPINGS) == len(runtime.registry)


def test_comfy_extras_modules_give_comfyui_names(tmp_path):
    runtime = build_runtime(Folders.create(tmp_path))
    extras = {
        "nodes_custom_sampler": ["SamplerCustom", "KSamplerSelect", "BasicScheduler", "Noise_RandomNoise"],
        "nodes_mask": ["MaskComposite", "ImageCompositeMasked", "composite"],
        "nodes_upscale_model": ["UpscaleModelLoader", "ImageUpscaleWithModel"],
        "nodes_post_processing": ["Blend", "Blur", "Sharpen"],
        "nodes_clip_sdxl": ["CLIPTextEncodeSDXL"],
        "nodes_latent": ["LatentBatch"],
        "nodes_model_advanced": ["LCM", "ModelSamplingDiscrete", "rescale_zero_terminal_snr_sigmas"],
        "nodes_hooks": ["CreateHookModelAsLora", "SetClipHooks"],
        "nodes_differential_diffusion": ["DifferentialDiffusion"],
        "nodes_lt": ["LTXVAddGuide", "get_noise_mask"],
    }
    for module_name, names in extras.items():
        module = importlib.import_module(f"comfy_extras.{module_name}")
        missing = [n for n in names if not hasattr(module, n)]
        assert not missing, (module_name, missing)
    from comfy_extras import nodes_mask, nodes_post_processing

    assert nodes_post_processing.Blend.FUNCTION == "blend_images"  # ComfyUI's classic method name
    assert nodes_mask.MaskComposite is importlib.import_module("nodes").NODE_CLASS_MAPPINGS["MaskComposite"]
    # composite pastes in place, weighted by the mask, at multiples of `multiplier` pixels.
    destination = torch.zeros(1, 3, 8, 8)
    source = torch.ones(1, 3, 4, 4)
    mask = torch.zeros(4, 4)
    mask[:, 2:] = 1.0
    out = nodes_mask.composite(destination, source, 2, 1, mask, multiplier=1)
    assert out is destination
    expected = torch.zeros(1, 3, 8, 8)
    expected[:, :, 1:5, 4:6] = 1.0
    assert torch.equal(destination, expected)
    # Blend through ComfyUI's class and method equals the built-in node's result.
    a, b = torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4, 3)
    (blended,) = nodes_post_processing.Blend().blend_images(a, b, 0.25, "normal")
    assert torch.allclose(blended, a * 0.75 + b * 0.25, atol=1e-6)
    assert runtime.services["samplers"] is not None
