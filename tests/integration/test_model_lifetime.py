"""Loader results live as long as something holds them: when the output cache evicts a checkpoint
loader's result, its models leave the model manager and their memory is freed."""

from __future__ import annotations

import gc

import pytest

from engine import api
from engine.execution.cache import OutputCache
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.runtime import MODEL_MANAGER, build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint

pytestmark = pytest.mark.slow


@api.node("HoldModel", inputs=[api.Input("model", "MODEL")], output_node=True)
def hold_model(model):
    return api.NodeOutput(ui={"family": [model.family]})


def test_evicted_loader_results_release_their_models(tmp_path):
    for name, seed in (("a.safetensors", 1), ("b.safetensors", 2)):
        write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / name, "sd1", seed=seed)
    runtime = build_runtime(
        Folders.create(tmp_path), load_custom_nodes=False, cache=OutputCache(max_entries=2)
    )
    runtime.registry.register(hold_model)
    manager = runtime.services[MODEL_MANAGER]

    def run(ckpt: str) -> None:
        prompt = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "2": {"class_type": "HoldModel", "inputs": {"model": ["1", 0]}},
        }
        result = runtime.executor.run(parse_api_workflow(prompt))
        assert result.ok, result.errors

    run("a.safetensors")
    gc.collect()
    first = {m.name for m in manager.models}
    assert any("a.safetensors" in n for n in first), first
    run("b.safetensors")  # the two-entry cache now holds only b's loader and output results
    gc.collect()
    names = {m.name for m in manager.models}
    assert any("b.safetensors" in n for n in names) and not any("a.safetensors" in n for n in names), names
