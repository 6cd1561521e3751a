"""Model merging nodes on tiny random checkpoints: every merged weight against the hand-computed one
(ratio * W1 + (1 - ratio) * W2, W1 + W2, m * (W1 - W2), per-block ratios) and the schemas against ComfyUI's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.diffusion.checkpoints.spec import UNET_PREFIX, ModelFamily
from engine.folders import Folders
from engine.handles.saving import patched_state_dict
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from engine.reference_schema import load_reference, schema_differences
from engine.runtime import build_runtime
from tests.factories.checkpoints import tiny_single_file_state_dict, write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

L, M = builtin("loaders"), builtin("model_merging")
REFERENCE = Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "comfyui-object_info.json"
MERGE_NODES = [
    "ModelMergeSimple", "ModelMergeBlocks", "ModelMergeAdd", "ModelMergeSubtract", "ModelMergeSD1",
    "ModelMergeSD2", "ModelMergeSDXL", "CLIPMergeSimple", "CLIPMergeAdd", "CLIPMergeSubtract",
]  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_env")
    ck = root / "models" / "checkpoints"
    write_tiny_checkpoint(ck / "a.safetensors", "sd1", seed=11)
    write_tiny_checkpoint(ck / "b.safetensors", "sd1", seed=12)
    write_tiny_checkpoint(ck / "xl.safetensors", "sdxl", seed=13)
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    a = L.checkpoint_loader_simple(ckpt_name="a.safetensors", context=ctx)
    b = L.checkpoint_loader_simple(ckpt_name="b.safetensors", context=ctx)
    xl = L.checkpoint_loader_simple(ckpt_name="xl.safetensors", context=ctx)
    return a, b, xl


def unet_file(seed: int) -> dict[str, torch.Tensor]:
    sd = tiny_single_file_state_dict(ModelFamily.SD1, seed=seed)
    return {k[len(UNET_PREFIX) :]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}


def assert_weights(handle, expected: dict[str, torch.Tensor]) -> None:
    got = patched_state_dict(handle)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-6, msg=key)


def test_merge_simple_is_the_ratio_blend_and_leaves_both_inputs_alone(env):
    (a, _, _), (b, _, _), _ = env
    w1, w2 = unet_file(11), unet_file(12)
    (merged,) = M.model_merge_simple(model1=a, model2=b, ratio=0.3)
    assert_weights(merged, {k: 0.3 * w1[k] + 0.7 * w2[k] for k in w1})
    # The inputs are clones of the same shared weights: both still give their file's weights exactly.
    for handle, original in ((a, w1), (b, w2)):
        got = patched_state_dict(handle)
        assert all(torch.equal(got[k], original[k]) for k in original)
    assert merged.family == a.family and merged.model_sampling is a.model_sampling


def test_merge_add_and_subtract(env):
    (a, _, _), (b, _, _), _ = env
    w1, w2 = unet_file(11), unet_file(12)
    (added,) = M.model_merge_add(model1=a, model2=b)
    assert_weights(added, {k: w1[k] + w2[k] for k in w1})
    (diff,) = M.model_merge_subtract(model1=a, model2=b, multiplier=1.5)
    assert_weights(diff, {k: 1.5 * (w1[k] - w2[k]) for k in w1})
    # Adding the difference back to the second model gives the first (the usual "add difference" recipe).
    (b_plus,) = M.model_merge_subtract(model1=a, model2=b, multiplier=1.0)
    (restored,) = M.model_merge_add(model1=b, model2=b_plus)
    assert_weights(restored, w1)


def test_merge_blocks_uses_the_longest_prefix_and_the_first_ratio_as_default(env):
    (a, _, _), (b, _, _), _ = env
    w1, w2 = unet_file(11), unet_file(12)
    (merged,) = M.model_merge_blocks(model1=a, model2=b, input=0.2, middle=0.5, out=0.9)

    def ratio(key: str) -> float:
        # "out" also prefixes output_blocks (ComfyUI's rule); time_embed matches nothing: the first ratio.
        if key.startswith("middle"):
            return 0.5
        if key.startswith("out"):
            return 0.9
        return 0.2

    assert {ratio(k) for k in w1} == {0.2, 0.5, 0.9}
    assert_weights(merged, {k: ratio(k) * w1[k] + (1 - ratio(k)) * w2[k] for k in w1})


def test_model_merge_sd1_per_block_ratios(env):
    (a, _, _), (b, _, _), _ = env
    w1, w2 = unet_file(11), unet_file(12)
    ratios = {name: 1.0 for name in M.SD_BLOCKS}
    ratios.update({"time_embed.": 0.0, "input_blocks.1.": 0.25, "middle_block.1.": 0.75, "out.": 0.5})
    (merged,) = M.model_merge_sd1(model1=a, model2=b, **ratios)

    def ratio(key: str) -> float:
        return next(
            (r for p, r in sorted(ratios.items(), key=lambda i: -len(i[0])) if key.startswith(p)), 0.0
        )

    touched = {k for k in w1 if ratio(k) != 1.0}
    assert any(k.startswith("input_blocks.1.") for k in touched)
    assert any(k.startswith("middle_block.1.") for k in touched) and "out.2.weight" in touched
    assert not any(k.startswith("input_blocks.2.") for k in touched)
    assert_weights(merged, {k: ratio(k) * w1[k] + (1 - ratio(k)) * w2[k] for k in w1})


def test_merge_reads_the_second_models_patches(env):
    """A LoRA (here a full-weight diff) on model2 is part of what is merged, as ComfyUI's key patches are;
    and merging a model with a patched clone of itself works on the one shared module."""
    (a, _, _), (b, _, _), _ = env
    w1, w2 = unet_file(11), unet_file(12)
    key = "out.2.weight"
    bump = torch.full_like(w2[key], 0.25)
    b_patched = b.clone()
    assert b_patched.add_patches({key: bump}) == [key]
    (merged,) = M.model_merge_simple(model1=a, model2=b_patched, ratio=0.5)
    expected = {k: 0.5 * w1[k] + 0.5 * w2[k] for k in w1}
    expected[key] = 0.5 * w1[key] + 0.5 * (w2[key] + bump)
    assert_weights(merged, expected)
    # Later changes to model2's handle do not reach the merge made before them.
    b_patched.add_patches({key: bump})
    assert_weights(merged, expected)

    a_patched = a.clone()
    a_patched.add_patches({key: bump})
    (self_merge,) = M.model_merge_simple(model1=a, model2=a_patched, ratio=0.5)
    same = dict(w1)
    same[key] = w1[key] + 0.5 * bump
    assert_weights(self_merge, same)


def test_merge_of_different_families_keeps_model1_where_shapes_differ(env, caplog):
    (a, _, _), _, (xl, _, _) = env
    w1 = unet_file(11)
    xl_sd = patched_state_dict(xl)
    (merged,) = M.model_merge_simple(model1=a, model2=xl, ratio=0.0)
    got = patched_state_dict(merged)
    shared = [k for k in w1 if k in xl_sd and xl_sd[k].shape == w1[k].shape]
    differing = [k for k in w1 if k in xl_sd and xl_sd[k].shape != w1[k].shape]
    assert shared and differing
    assert all(torch.equal(got[k], xl_sd[k].float()) for k in shared)
    assert all(torch.equal(got[k], w1[k]) for k in differing)
    assert "differ in shape" in caplog.text


def test_clip_merges(env):
    (_, c1, _), (_, c2, _), _ = env
    t1, t2 = patched_state_dict(c1), patched_state_dict(c2)
    (simple,) = M.clip_merge_simple(clip1=c1, clip2=c2, ratio=0.25)
    assert_weights(simple, {k: 0.25 * t1[k] + 0.75 * t2[k] for k in t1})
    (added,) = M.clip_merge_add(clip1=c1, clip2=c2)
    assert_weights(added, {k: t1[k] + t2[k] for k in t1})
    (diff,) = M.clip_merge_subtract(clip1=c1, clip2=c2, multiplier=-2.0)
    assert_weights(diff, {k: -2.0 * (t1[k] - t2[k]) for k in t1})
    # The merged text encoder still encodes (the patched weights are used by the encoder).
    cond, _ = simple.encode("a photo of a cat")
    assert torch.isfinite(cond).all()
    assert not torch.equal(cond, c1.encode("a photo of a cat")[0])


def test_merged_model_samples_and_differs_from_either_input(env):
    (a, _, _), (b, _, _), _ = env
    sampling = builtin("sampling")
    (merged,) = M.model_merge_simple(model1=a, model2=b, ratio=0.5)
    pos = [[torch.zeros(1, 77, 32), {}]]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    args = dict(
        seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal", positive=pos, negative=pos
    )
    ctx = node_context()[0]
    outs = [
        sampling.ksampler(model=m, latent_image=latent, denoise=1.0, context=ctx, **args)[0]["samples"]
        for m in (a, b, merged)
    ]
    assert not torch.equal(outs[2], outs[0]) and not torch.equal(outs[2], outs[1])


@pytest.mark.skipif(not REFERENCE.is_file(), reason="ComfyUI reference /object_info not in this checkout")
def test_merge_schemas_equal_comfyui(tmp_path):
    reference = load_reference(REFERENCE)
    registry = build_runtime(Folders.create(tmp_path), load_custom_nodes=False, with_models=False).registry
    problems = {n: schema_differences(registry.node_info(n), reference[n]) for n in MERGE_NODES}
    assert {n: p for n, p in problems.items() if p} == {}


def test_model_merge_sdxl_block_names_without_dots(tmp_path):
    ck = tmp_path / "models" / "checkpoints"
    write_tiny_checkpoint(ck / "x1.safetensors", "sdxl", seed=31)
    write_tiny_checkpoint(ck / "x2.safetensors", "sdxl", seed=32)
    ctx = node_context(
        folders=Folders.create(tmp_path), manager=ModelManager(select_device(MemoryOptions()))
    )[0]
    (m1, _, _), (m2, _, _) = (
        L.checkpoint_loader_simple(ckpt_name=n, context=ctx) for n in ("x1.safetensors", "x2.safetensors")
    )
    w1, w2 = patched_state_dict(m1), patched_state_dict(m2)
    ratios = {name: 1.0 for name in M.SDXL_BLOCKS}
    ratios.update({"label_emb.": 0.0, "input_blocks.1": 0.5, "output_blocks.2": 0.2})
    (merged,) = M.model_merge_sdxl(model1=m1, model2=m2, **ratios)

    def ratio(key: str) -> float:
        if key.startswith("label_emb."):
            return 0.0
        return (
            0.5 if key.startswith("input_blocks.1.") else 0.2 if key.startswith("output_blocks.2.") else 1.0
        )

    assert any(k.startswith("label_emb.") for k in w1) and any(k.startswith("output_blocks.2.") for k in w1)
    assert_weights(merged, {k: ratio(k) * w1[k] + (1 - ratio(k)) * w2[k] for k in w1})
