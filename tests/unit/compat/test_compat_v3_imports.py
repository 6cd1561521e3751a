"""The V3 API and execution modules import inside a pack with the names real packs read at import time
(ComfyUI-KJNodes, Impact-Pack, rgthree, essentials, controlnet_aux), in runtimes with and without models."""

from __future__ import annotations

import json
import textwrap

import pytest

from engine.folders import Folders
from engine.runtime import build_runtime

IMPORTING_PACK = """
import json, os

import execution
import comfy_execution
import folder_paths
from comfy_api import feature_flags
from comfy_api.latest import ComfyAPI, ComfyAPISync, ComfyExtension, Input, InputImpl, Types, io, ui
from comfy_api.v0_0_2 import io as io_v2
from comfy_api.torch_helpers import set_torch_compile_wrapper
from comfy_execution.graph import DynamicPrompt, ExecutionBlocker, get_input_info
from comfy_execution.graph_utils import GraphBuilder, add_graph_prefix, is_link

# Impact-Pack wraps the executor's error handler at import
original = execution.PromptExecutor.handle_execution_error
execution.PromptExecutor.handle_execution_error = lambda *a, **k: original(*a, **k)

graph, outputs = add_graph_prefix({"1": {"class_type": "X", "inputs": {"a": ["2", 0]}}}, (["1", 0], 5), "p.")
seen = {
    "same_io": io_v2.ComfyNode is io.ComfyNode,
    "types": [io.Image.io_type, io.Model.Output().io_type, io.Custom("MINE").io_type, io.AnyType.io_type],
    "any_matches": not (io.AnyType.io_type != "LATENT"),
    "containers": Types.VideoContainer.as_input(),
    "hidden": [h.value for h in io.Hidden],
    "feature": feature_flags.supports_feature({}, "sid", "supports_preview_metadata"),
    "prefixed": [graph, list(outputs)],
    "link": [is_link(["1", 0]), is_link([1, 0]), is_link(["1", True])],
    "info": get_input_info(type("C", (), {"INPUT_TYPES": classmethod(lambda c: {"optional": {"x": ("INT",)}})}), "x"),
    "blocker": ExecutionBlocker("m").message,
    "image_input": Input.Image.__name__,
    "compile": callable(set_torch_compile_wrapper),
}
with open(os.path.join(folder_paths.get_output_directory(), "v3seen.json"), "w") as out:
    json.dump(seen, out)

NODE_CLASS_MAPPINGS = {}
"""


@pytest.mark.parametrize("with_models", [False, True])
def test_v3_and_execution_modules_import_in_a_pack(tmp_path, with_models):
    folder = tmp_path / "custom_nodes" / "v3importer"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(IMPORTING_PACK))
    folders = Folders.create(tmp_path)
    runtime = build_runtime(folders, with_models=with_models)
    record = runtime.plugins.get("v3importer")
    assert record.error is None, record.error
    seen = json.loads((folders.output / "v3seen.json").read_text())
    assert seen["same_io"] is True
    assert seen["types"] == ["IMAGE", "MODEL", "MINE", "*"]
    assert seen["any_matches"] is True
    assert seen["containers"] == ["auto", "mp4"]
    assert seen["hidden"] == [
        "UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG",
    ]  # fmt: skip
    assert seen["feature"] is False
    assert seen["prefixed"] == [{"p.1": {"class_type": "X", "inputs": {"a": ["p.2", 0]}}}, [["p.1", 0], 5]]
    assert seen["link"] == [True, False, False]
    assert seen["info"] == ["INT", "optional", {}]
    assert seen["blocker"] == "m" and seen["image_input"] == "Tensor" and seen["compile"] is True
