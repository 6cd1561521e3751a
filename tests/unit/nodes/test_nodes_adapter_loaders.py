"""ComfyUI's other loader nodes: CheckpointLoader (config ignored) and DiffusersLoader load real tiny files;
the loaders of model kinds diffgraph cannot run yet fail with an error naming the node; schemas are
ComfyUI's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.folders import MODEL_KINDS, Folders
from engine.graph.api_format import parse_api_workflow
from engine.handles.saving import patched_state_dict
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from engine.reference_schema import load_reference, schema_differences
from engine.runtime import build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

A, L = builtin("adapter_loaders"), builtin("loaders")
REFERENCE = Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "comfyui-object_info.json"
LOADERS = [
    "CheckpointLoader", "DiffusersLoader", "ImageOnlyCheckpointLoader", "unCLIPCheckpointLoader",
    "CLIPVisionLoader", "StyleModelLoader", "GLIGENLoader", "HypernetworkLoader",
]  # fmt: skip
# (node function, its file input, the folder kind, other inputs)
UNSUPPORTED = [
    (A.image_only_checkpoint_loader, "ckpt_name", "checkpoints", {}),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter_loaders")
    models = root / "models"
    write_tiny_checkpoint(models / "checkpoints" / "sd1.safetensors", "sd1", seed=21)
    write_tiny_checkpoint(models / "diffusers" / "pipes" / "tiny", "sd1", seed=22, layout="diffusers")
    (models / "configs").mkdir(parents=True)
    (models / "configs" / "v1-inference.yaml").write_text(
        "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    )
    for kind in ("clip_vision", "style_models", "gligen", "hypernetworks"):
        (models / kind).mkdir(parents=True)
        (models / kind / "thing.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    folders = Folders.create(root)
    ctx = node_context(folders=folders, manager=ModelManager(select_device(MemoryOptions())))[0]
    return root, ctx


def test_new_model_folder_kinds_exist(env):
    root, ctx = env
    for kind in (
        "style_models",
        "gligen",
        "hypernetworks",
        "photomaker",
        "configs",
        "diffusers",
        "clip_vision",
    ):
        assert kind in MODEL_KINDS
        assert ctx.folders.roots(kind) == [root / "models" / kind]


def test_checkpoint_loader_loads_what_checkpoint_loader_simple_loads(env):
    _, ctx = env
    with_config = A.checkpoint_loader(
        config_name="v1-inference.yaml", ckpt_name="sd1.safetensors", context=ctx
    )
    simple = L.checkpoint_loader_simple(ckpt_name="sd1.safetensors", context=ctx)
    assert [type(h) for h in with_config] == [type(h) for h in simple]
    assert with_config[0].family == "sd1" and with_config[1].family == "sd1"
    for ours, theirs in zip(with_config, simple, strict=True):
        a, b = patched_state_dict(ours), patched_state_dict(theirs)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="no-such.yaml"):
        A.checkpoint_loader(config_name="no-such.yaml", ckpt_name="sd1.safetensors", context=ctx)


def test_diffusers_loader_lists_model_folders_and_loads_them(env):
    root, _ = env
    runtime = build_runtime(Folders.create(root), load_custom_nodes=False, with_models=False)
    choices = runtime.registry.node_info("DiffusersLoader")["input"]["required"]["model_path"][0]
    assert choices == ["pipes/tiny/model_index.json"]
    _, ctx = env
    # Our choice and ComfyUI's spelling of it (the folder) both load the diffusers folder.
    for name in ("pipes/tiny/model_index.json", "pipes/tiny"):
        model, clip, vae = A.diffusers_loader(model_path=name, context=ctx)
        assert model.family == "sd1" and clip.family == "sd1" and vae.downscale == 2
        sample = vae.decode(torch.zeros(1, 4, 4, 4))
        assert sample.shape == (1, 8, 8, 3)


@pytest.mark.parametrize("function,file_input,kind,others", UNSUPPORTED)
def test_loaders_of_unsupported_kinds_fail_naming_the_node(env, function, file_input, kind, others):
    _, ctx = env
    with pytest.raises(A.UnsupportedModelError, match=function.node_type) as info:
        function(
            **{file_input: "thing.safetensors" if kind != "checkpoints" else "sd1.safetensors"},
            **others,
            context=ctx,
        )
    assert "not supported by diffgraph yet" in str(info.value)
    # A missing file is reported as missing, not as unsupported.
    with pytest.raises(FileNotFoundError):
        function(**{file_input: "absent.safetensors"}, **others, context=ctx)


def test_unsupported_loader_in_a_workflow_is_a_node_error(env):
    root, _ = env
    runtime = build_runtime(Folders.create(root), load_custom_nodes=False)
    workflow = parse_api_workflow(
        {"1": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": "sd1.safetensors"}}}
    )
    result = runtime.executor.run(workflow, targets=["1"])
    assert result.status == "error"
    error = result.errors[0]
    assert (error.node_id, error.node_type) == ("1", "ImageOnlyCheckpointLoader")
    assert "(Stable Video Diffusion) checkpoints are not supported by diffgraph yet" in str(error)


@pytest.mark.skipif(not REFERENCE.is_file(), reason="ComfyUI reference /object_info not in this checkout")
def test_loader_schemas_equal_comfyui(tmp_path):
    reference = load_reference(REFERENCE)
    registry = build_runtime(Folders.create(tmp_path), load_custom_nodes=False, with_models=False).registry
    problems = {n: schema_differences(registry.node_info(n), reference[n]) for n in LOADERS}
    assert {n: p for n, p in problems.items() if p} == {}
    titles = {n: registry.node_info(n)["display_name"] for n in LOADERS}
    assert titles == {n: reference[n]["display_name"] for n in LOADERS}
    assert registry.node_info("CheckpointLoader")["deprecated"] is True
