"""The compat CLIP's encode_from_tokens(tokens, return_pooled="unprojected") (ComfyUI's projected_pooled
False) gives the pooled tower's end-token state without the text projection: for SDXL the projected pooled
vector is exactly its projection; SD1 (no pooled tower) pools its only tower as GLIGEN's phrase encoding."""

from __future__ import annotations

import pytest
import torch

from engine.folders import Folders
from engine.handles.gligen import unprojected_pooled
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

L = builtin("loaders")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("unprojected_env")
    for family in ("sd1", "sdxl"):
        write_tiny_checkpoint(root / "models" / "checkpoints" / f"{family}.safetensors", family, seed=4)
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    return {
        f: L.checkpoint_loader_simple(ckpt_name=f"{f}.safetensors", context=ctx)[1] for f in ("sd1", "sdxl")
    }


def test_sdxl_unprojected_pooled_is_the_input_of_the_text_projection(clips):
    clip = clips["sdxl"]
    tokens = clip.tokenize("a red cube")
    cond, projected = clip.encode_from_tokens(tokens, return_pooled=True)
    cond2, raw = clip.encode_from_tokens(tokens, return_pooled="unprojected")
    assert torch.equal(cond, cond2)
    spec = next(s for s in clip.encoder.specs if s.pooled)
    projection = clip.encoder.towers[spec.key].text_projection
    assert raw.shape[-1] == projection.weight.shape[1] and not torch.allclose(raw, projected)
    with torch.no_grad():
        torch.testing.assert_close(projection(raw.to(projection.weight.dtype)).float(), projected)
    out = clip.encode_from_tokens(tokens, return_pooled="unprojected", return_dict=True)
    assert torch.equal(out["pooled_output"], raw)


def test_sd1_unprojected_pooled_is_the_towers_end_token_state(clips):
    clip = clips["sd1"]
    _, raw = clip.encode_from_tokens(clip.tokenize("a red cube"), return_pooled="unprojected")
    assert raw is not None and torch.equal(raw, unprojected_pooled(clip, "a red cube"))
