"""Start-up stays lean: `diffgraph serve --quick-test-for-ci` in a fresh interpreter builds the runtime with
a custom pack that imports ComfyUI's usual modules, starts the server, answers /object_info, stops — and none
of the heavy libraries (transformers, diffusers, safetensors, sentencepiece, scipy, kornia ...) nor PIL's
format plugins beyond PNG were imported on the way; they load when a model or image first needs them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
HEAVY = (
    "transformers",
    "diffusers",
    "safetensors",
    "sentencepiece",
    "tokenizers",
    "scipy",
    "kornia",
    "torchvision",
    "gguf",
)

# Runs `diffgraph serve --quick-test-for-ci` in this interpreter, then reports what start-up imported.
PROBE = """
import gc, json, sys
from engine.cli import main

code = main(["serve", "--base-directory", sys.argv[1], "--quick-test-for-ci", "--cpu"])
heavy = sorted(name for name in {heavy!r} if name in sys.modules)
pil_plugins = sorted(
    name for name in sys.modules if name.startswith("PIL.") and name.endswith("ImagePlugin")
)
print(json.dumps({{"code": code, "heavy": heavy, "pil_plugins": pil_plugins,
                   "gc_enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
"""

# What a typical classic pack imports from ComfyUI at its top (our environment answers these imports).
COMFY_USER_PACK = """
import comfy.model_management
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import node_helpers
import nodes
from comfy_api.latest import io


class Doubler:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    def run(self, value):
        return (value * 2,)


NODE_CLASS_MAPPINGS = {"StartupDoubler": Doubler}
"""


def test_serve_start_up_imports_no_heavy_library_and_reports_pack_times(tmp_path):
    (tmp_path / "models").mkdir()
    pack = tmp_path / "custom_nodes" / "comfy_user_pack"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent(COMFY_USER_PACK))
    (tmp_path / "custom_nodes" / "broken_pack.py").write_text("raise ImportError('a missing library')\n")
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    *chatter, last = done.stdout.strip().splitlines()
    result = json.loads(last)
    assert result["code"] == 0, done.stdout + done.stderr
    # The server answered /object_info with every node type, the pack's among them.
    answer = next(line for line in chatter if line.startswith("diffgraph quick test:"))
    assert "answered 200" in answer
    assert result["heavy"] == []
    assert set(result["pil_plugins"]) <= {"PIL.PngImagePlugin"}
    # The start-up log names each custom pack with its import time; the broken one is marked failed.
    log = done.stderr
    assert "custom node pack imported in" in log
    assert "pack=comfy_user_pack" in log and "nodes=1 failed=False" in log
    assert "pack=broken_pack" in log and "failed=True" in log
    # The collector was paused for start-up and is running again, with start-up's objects frozen.
    assert result["gc_enabled"] and result["frozen"] > 100_000
