"""Every environment module of the ComfyUI layer's core (folder_paths, server, protocol, comfy.utils,
comfy.model_management, comfy.cli_args, comfy.options, comfy.comfy_types, latent_preview, node_helpers)
imports inside a pack, with the names packs read at import time, in a runtime with and without models."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.runtime import build_runtime

IMPORTING_PACK = """
import json, os

import folder_paths
import server
import protocol
import latent_preview
import node_helpers
import comfy
import comfy.utils
import comfy.model_management as mm
import comfy.cli_args
import comfy.options
from comfy.cli_args import args, LatentPreviewMethod
from comfy.comfy_types import IO, ComfyNodeABC, InputTypeDict
from comfy.comfy_types.node_typing import CheckLazyMixin, FileLocator
from server import PromptServer, BinaryEventTypes
from latent_preview import TAESD, TAESDPreviewerImpl, Latent2RGBPreviewer

seen = {
    "instance": type(PromptServer.instance).__name__,
    "binary": [BinaryEventTypes.PREVIEW_IMAGE, BinaryEventTypes.UNENCODED_PREVIEW_IMAGE,
               BinaryEventTypes.TEXT, protocol.BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA],
    "device": str(mm.get_torch_device()),
    "intermediate": str(mm.intermediate_device()),
    "offload": str(mm.unet_offload_device()),
    "unet_dtype": str(mm.unet_dtype()),
    "vae_dtype": str(mm.vae_dtype()),
    "vram_state": mm.vram_state.name,
    "free_positive": mm.get_free_memory() > 0,
    "total_positive": mm.get_total_memory() > 0,
    "interrupted": mm.processing_interrupted(),
    "preview_method": args.preview_method.value,
    "output_directory": args.output_directory,
    "disable_metadata": args.disable_metadata,
    "parsing": comfy.options.args_parsing,
    "models_dir": folder_paths.models_dir,
    "base_path": folder_paths.base_path,
    "kinds": sorted(folder_paths.folder_names_and_paths),
    "custom_nodes": folder_paths.folder_names_and_paths["custom_nodes"][0][0],
    "pt": ".safetensors" in folder_paths.supported_pt_extensions,
    "io_any": IO.ANY != "IMAGE",
    "io_number": IO.NUMBER != "INT",
    "hash": node_helpers.hasher()().name,
    "max_res": comfy.utils.MAX_RESOLUTION,
}
with open(os.path.join(folder_paths.get_output_directory(), "seen.json"), "w") as out:
    json.dump(seen, out)


class Mark(ComfyNodeABC):
    RETURN_TYPES = (IO.STRING,)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypeDict:
        return {"required": {"text": (IO.STRING, {"default": "x"})}}

    def run(self, text):
        return (text + "!",)


NODE_CLASS_MAPPINGS = {"EnvMark": Mark}
"""


def write_pack(root: Path, name: str, source: str) -> None:
    folder = root / "custom_nodes" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(textwrap.dedent(source))


@pytest.mark.parametrize("with_models", [False, True])
def test_every_core_env_module_imports_in_a_pack(tmp_path, with_models):
    write_pack(tmp_path, "importer", IMPORTING_PACK)
    folders = Folders.create(tmp_path)
    runtime = build_runtime(folders, with_models=with_models)
    record = runtime.plugins.get("importer")
    assert record.error is None, record.error
    assert record.nodes == ["EnvMark"]
    seen = json.loads((folders.output / "seen.json").read_text())
    assert seen["instance"] == "PromptServer"
    assert seen["binary"] == [1, 2, 3, 4]
    assert seen["device"] == "cpu" and seen["intermediate"] == "cpu" and seen["offload"] == "cpu"
    assert seen["unet_dtype"] == "torch.float32" and seen["vae_dtype"] == "torch.float32"
    assert seen["vram_state"] == "DISABLED"  # ComfyUI's state on a CPU-only machine
    assert seen["free_positive"] and seen["total_positive"]
    assert seen["interrupted"] is False
    # the runtime's --preview-method (default auto); a runtime without models has no previewer
    assert seen["preview_method"] == ("auto" if with_models else "latent2rgb")
    assert seen["output_directory"] == str(folders.output)
    assert seen["disable_metadata"] is False and seen["parsing"] is False
    assert seen["models_dir"] == str(tmp_path / "models") and seen["base_path"] == str(tmp_path)
    for kind in ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
                 "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
                 "model_patches", "audio_encoders"):  # fmt: skip
        assert kind in seen["kinds"], kind
    assert "unet" not in seen["kinds"] and "clip" not in seen["kinds"]  # legacy names map, as ComfyUI
    assert seen["custom_nodes"] == str(tmp_path / "custom_nodes")
    assert seen["pt"] and seen["io_any"] is False and seen["io_number"] is False
    assert seen["hash"] == "sha256" and seen["max_res"] == 16384
    prompt = {"1": {"class_type": "EnvMark", "inputs": {"text": "a"}}}
    result = runtime.executor.run(parse_api_workflow(prompt), targets=["1"])
    assert result.ok and result.results["1"].outputs == [["a!"]]  # per output, a list of values


LAZY_PACK = """
import comfy

DEVICE = str(comfy.model_management.get_torch_device())  # never imported explicitly, as in ComfyUI
HAS_UTILS = hasattr(comfy, "utils")
HAS_UNKNOWN = hasattr(comfy, "no_such_module")
NODE_CLASS_MAPPINGS = {}
"""


def test_comfy_submodules_are_attributes_of_the_package(tmp_path):
    """ComfyUI imports its comfy.* modules before packs load, so `import comfy` alone gives access to
    comfy.model_management; here they are imported on first use."""
    write_pack(tmp_path, "lazy", LAZY_PACK)
    runtime = build_runtime(Folders.create(tmp_path), with_models=False)
    record = runtime.plugins.get("lazy")
    assert record.error is None, record.error
    module = sys.modules[record.module]
    assert module.DEVICE == "cpu" and module.HAS_UTILS is True and module.HAS_UNKNOWN is False


def test_io_types_match_as_comfyui_links_them():
    from engine.comfy_compat.socket_types import types_differ

    assert not types_differ("*", "IMAGE") and not types_differ("IMAGE", "*")
    assert not types_differ("FLOAT,INT", "INT") and not types_differ("INT", "FLOAT,INT")
    assert not types_differ("STRING,FLOAT,INT,BOOLEAN", "FLOAT,INT")
    assert types_differ("IMAGE", "MASK") and types_differ("FLOAT,INT", "INT,STRING")
    assert types_differ("STRING", 3)


ROOT_FINDING_PACK = """
import inspect, os
import folder_paths
from server import PromptServer

# The two ways packs find ComfyUI's root, then write below it (Custom-Scripts, Impact-Pack do so).
FROM_FOLDER_PATHS = os.path.dirname(folder_paths.__file__)
FROM_SERVER = os.path.dirname(inspect.getfile(PromptServer))
os.makedirs(os.path.join(FROM_SERVER, "web", "extensions", "root_finder"), exist_ok=True)
NODE_CLASS_MAPPINGS = {}
"""


def test_packs_find_comfyuis_root_at_the_runtime_base_not_in_the_engine(tmp_path):
    from engine.comfy_compat.binding import ENV_DIRECTORY

    write_pack(tmp_path, "root_finder", ROOT_FINDING_PACK)
    runtime = build_runtime(Folders.create(tmp_path), with_models=False)
    assert runtime.plugins.get("root_finder").error is None
    module = sys.modules["diffgraph_custom_nodes.root_finder"]
    assert str(tmp_path) == module.FROM_FOLDER_PATHS and str(tmp_path) == module.FROM_SERVER
    assert (tmp_path / "web" / "extensions" / "root_finder").is_dir()
    assert not (ENV_DIRECTORY / "web").exists()
