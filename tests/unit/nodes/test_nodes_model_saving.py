"""Saving nodes: checkpoints, UNets, text encoders and VAEs written in ComfyUI's layout and metadata reload
through diffgraph's loaders bit-identically; LoRA extraction from a model difference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.diffusion.checkpoints.spec import SDXL_CLIP_L_PREFIX, UNET_PREFIX, ModelFamily
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.handles.lora_extract import extract_lora
from engine.handles.saving import patched_state_dict
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from engine.reference_schema import load_reference, schema_differences
from engine.runtime import build_runtime
from tests.factories.checkpoints import tiny_single_file_state_dict, write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

L, S, M, LORA = (builtin(n) for n in ("loaders", "model_saving", "model_merging", "lora"))
REFERENCE = Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "comfyui-object_info.json"
PROMPT = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}}}
WORKFLOW = {"nodes": [{"id": 4, "type": "CheckpointLoaderSimple"}], "links": [], "version": 0.4}


def make_context(tmp_path: Path, *families: str):
    ck = tmp_path / "models" / "checkpoints"
    for i, family in enumerate(families):
        write_tiny_checkpoint(ck / f"{family}.safetensors", family, seed=40 + i)
    folders = Folders.create(tmp_path)
    folders.create_directories()
    return node_context(folders=folders, manager=ModelManager(select_device(MemoryOptions())))[0]


def modules_state(handles) -> list[dict[str, torch.Tensor]]:
    return [patched_state_dict(h) for h in handles]


def assert_bit_identical(first: list[dict[str, torch.Tensor]], second: list[dict[str, torch.Tensor]]) -> None:
    for a, b in zip(first, second, strict=True):
        assert set(a) == set(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2_v", "sdxl", "sdxl_refiner"])
def test_checkpoint_save_has_the_original_layout_and_reloads_bit_identically(tmp_path, family):
    ctx = make_context(tmp_path, family)
    loaded = L.checkpoint_loader_simple(ckpt_name=f"{family}.safetensors", context=ctx)
    S.checkpoint_save(*loaded, filename_prefix="checkpoints/ComfyUI", context=ctx, prompt=PROMPT)
    saved = tmp_path / "models" / "checkpoints" / "ComfyUI_00001_.safetensors"
    assert not saved.exists()  # written under output/, where ComfyUI puts it
    saved = tmp_path / "output" / "checkpoints" / "ComfyUI_00001_.safetensors"
    original = tiny_single_file_state_dict(ModelFamily(family), seed=40)
    written = load_file(str(saved))
    expected_keys = set(original)
    if family == "sd2_v":
        expected_keys.add("v_pred")  # ComfyUI's marker for v-prediction
    if family == "sdxl":
        expected_keys.add(SDXL_CLIP_L_PREFIX + "embeddings.position_ids")  # real SDXL files carry it too
    assert set(written) == expected_keys
    for key, value in original.items():
        assert torch.equal(written[key], value), key
    ctx.folders.add_model_path("checkpoints", saved.parent)  # as extra_model_paths.yaml would
    reloaded = L.checkpoint_loader_simple(ckpt_name="ComfyUI_00001_.safetensors", context=ctx)
    assert reloaded[0].family == loaded[0].family
    assert reloaded[0].model_sampling.prediction == loaded[0].model_sampling.prediction
    assert_bit_identical(modules_state(loaded), modules_state(reloaded))


def test_checkpoint_metadata_and_counter(tmp_path):
    ctx = make_context(tmp_path, "sdxl", "sd1")
    xl = L.checkpoint_loader_simple(ckpt_name="sdxl.safetensors", context=ctx)
    extra = {"workflow": WORKFLOW}
    out = S.checkpoint_save(
        *xl, filename_prefix="checkpoints/merged", context=ctx, prompt=PROMPT, extra_pnginfo=extra
    )
    assert out.ui == {
        "models": [{"filename": "merged_00001_.safetensors", "subfolder": "checkpoints", "type": "output"}]
    }
    S.checkpoint_save(*xl, filename_prefix="checkpoints/merged", context=ctx)
    folder = tmp_path / "output" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "merged_00001_.safetensors",
        "merged_00002_.safetensors",
    ]
    with safe_open(str(folder / "merged_00001_.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta == {
        "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.implementation": "sgm",
        "modelspec.title": "merged 1",
        "modelspec.predict_key": "epsilon",
        "prompt": json.dumps(PROMPT),
        "workflow": json.dumps(WORKFLOW),
    }
    with safe_open(str(folder / "merged_00002_.safetensors"), "pt") as f:
        assert f.metadata()["prompt"] == "" and f.metadata()["modelspec.title"] == "merged 2"
    sd1 = L.checkpoint_loader_simple(ckpt_name="sd1.safetensors", context=ctx)
    S.checkpoint_save(*sd1, filename_prefix="sd1", context=ctx)
    with safe_open(str(tmp_path / "output" / "sd1_00001_.safetensors"), "pt") as f:
        # ComfyUI writes the modelspec block for SDXL-family models only, the prediction key always.
        assert f.metadata() == {"modelspec.predict_key": "epsilon", "prompt": ""}


def test_a_saved_merge_reloads_as_the_blend(tmp_path):
    ctx = make_context(tmp_path, "sd1", "sd2")
    (a, clip_a, vae) = L.checkpoint_loader_simple(ckpt_name="sd1.safetensors", context=ctx)
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "b.safetensors", "sd1", seed=7)
    (b, clip_b, _) = L.checkpoint_loader_simple(ckpt_name="b.safetensors", context=ctx)
    (model,) = M.model_merge_simple(model1=a, model2=b, ratio=0.75)
    (clip,) = M.clip_merge_simple(clip1=clip_a, clip2=clip_b, ratio=0.75)
    S.checkpoint_save(model, clip, vae, filename_prefix="m", context=ctx)
    written = load_file(str(tmp_path / "output" / "m_00001_.safetensors"))
    w1 = tiny_single_file_state_dict(ModelFamily.SD1, seed=40)
    w2 = tiny_single_file_state_dict(ModelFamily.SD1, seed=7)
    for key in (
        UNET_PREFIX + "out.2.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        torch.testing.assert_close(written[key], 0.75 * w1[key] + 0.25 * w2[key], rtol=1e-6, atol=1e-6)
    assert torch.equal(
        written["first_stage_model.decoder.conv_out.weight"], w1["first_stage_model.decoder.conv_out.weight"]
    )


def test_model_save_writes_the_unet_alone(tmp_path):
    ctx = make_context(tmp_path, "sd2_v")
    model, _, _ = L.checkpoint_loader_simple(ckpt_name="sd2_v.safetensors", context=ctx)
    S.model_save(model=model, filename_prefix="diffusion_models/ComfyUI", context=ctx)
    path = tmp_path / "output" / "diffusion_models" / "ComfyUI_00001_.safetensors"
    written = load_file(str(path))
    original = tiny_single_file_state_dict(ModelFamily.SD2_V, seed=40)
    unet_keys = {k for k in original if k.startswith(UNET_PREFIX)}
    assert set(written) == unet_keys | {"v_pred"}
    assert all(torch.equal(written[k], original[k]) for k in unet_keys)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"modelspec.predict_key": "v", "prompt": ""}


@pytest.mark.parametrize("family,towers", [("sd1", ["clip_l"]), ("sdxl", ["clip_l", "clip_g"])])
def test_clip_save_writes_one_hf_layout_file_per_tower(tmp_path, family, towers):
    ctx = make_context(tmp_path, family)
    _, clip, _ = L.checkpoint_loader_simple(ckpt_name=f"{family}.safetensors", context=ctx)
    S.clip_save(clip=clip, filename_prefix="clip/ComfyUI", context=ctx, prompt=PROMPT)
    folder = tmp_path / "output" / "clip"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"ComfyUI_{t}_00001_.safetensors" for t in towers
    )
    tower_sd = {k: v for k, v in patched_state_dict(clip).items()}
    for tower in towers:
        path = folder / f"ComfyUI_{tower}_00001_.safetensors"
        written = load_file(str(path))
        assert all(k.startswith(("text_model.", "text_projection.")) for k in written)
        ours = {k for k in tower_sd if k.startswith(f"towers.{tower}.")}
        assert len(written) == len(ours)
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == {"format": "pt", "prompt": json.dumps(PROMPT)}
    if family == "sd1":
        # CLIPLoader reads the file back into the same SD1 text encoder, bit for bit.
        from engine.handles import load_clip_handle

        reloaded = load_clip_handle(folder / "ComfyUI_clip_l_00001_.safetensors", manager=ctx.models)
        assert_bit_identical(modules_state([clip]), modules_state([reloaded]))


def test_vae_save_reloads_through_vae_loader(tmp_path):
    ctx = make_context(tmp_path, "sd1")
    _, _, vae = L.checkpoint_loader_simple(ckpt_name="sd1.safetensors", context=ctx)
    S.vae_save(vae=vae, filename_prefix="vae/ComfyUI_vae", context=ctx)
    path = tmp_path / "output" / "vae" / "ComfyUI_vae_00001_.safetensors"
    original = tiny_single_file_state_dict(ModelFamily.SD1, seed=40)
    vae_keys = {k[len("first_stage_model.") :] for k in original if k.startswith("first_stage_model.")}
    assert set(load_file(str(path))) == vae_keys
    ctx.folders.add_model_path("vae", path.parent)
    (reloaded,) = L.vae_loader(vae_name="ComfyUI_vae_00001_.safetensors", context=ctx)
    assert_bit_identical(modules_state([vae]), modules_state([reloaded]))


def test_extract_lora_is_the_clamped_truncated_svd():
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(256, 4, generator=g) @ torch.randn(4, 128, generator=g)
    up, down = extract_lora(low_rank, 4)
    assert up.shape == (256, 4) and down.shape == (4, 128)
    # By hand: U S and V^T truncated to the rank, clamped to +-q, q the 0.99 quantile of both (ComfyUI's rule).
    u, s, vh = torch.linalg.svd(low_rank)
    up0, down0 = u[:, :4] * s[:4], vh[:4]
    q = torch.quantile(torch.cat([up0.flatten(), down0.flatten()]), 0.99)
    torch.testing.assert_close(up, up0.clamp(-q, q))
    torch.testing.assert_close(down, down0.clamp(-q, q))
    assert (up.abs() >= q - 1e-6).sum() > 0  # the clamp did bite; the product stays near the matrix
    assert torch.linalg.norm(up @ down - low_rank) < 0.2 * torch.linalg.norm(low_rank)
    conv = torch.randn(8, 4, 3, 3, generator=g)
    up, down = extract_lora(conv, 64)  # the rank is capped at min(out, in)
    assert up.shape == (8, 4, 1, 1) and down.shape == (4, 4, 3, 3)


def test_lora_save_full_diff_reapplies_the_difference(tmp_path):
    ctx = make_context(tmp_path, "sd1")
    a, _, _ = L.checkpoint_loader_simple(ckpt_name="sd1.safetensors", context=ctx)
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "b.safetensors", "sd1", seed=9)
    b, _, _ = L.checkpoint_loader_simple(ckpt_name="b.safetensors", context=ctx)
    (diff,) = M.model_merge_subtract(model1=b, model2=a, multiplier=1.0)
    S.lora_save(filename_prefix="ComfyUI_extracted_lora", rank=8, lora_type="full_diff", bias_diff=True,
                model_diff=diff, context=ctx)  # fmt: skip
    path = tmp_path / "output" / "ComfyUI_extracted_lora_00001_.safetensors"
    lora = load_file(str(path))
    assert all(v.dtype == torch.float16 and k.startswith("diffusion_model.") for k, v in lora.items())
    assert {k.rsplit(".", 1)[-1] for k in lora} == {"diff", "diff_b"}
    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    path.rename(loras / "x.safetensors")
    out = LORA.lora_loader_model_only(model=a, lora_name="x.safetensors", strength_model=1.0, context=ctx)
    assert "not loaded" not in out.ui["text"][0]
    got, target = patched_state_dict(out.values[0]), patched_state_dict(b)
    for key in target:  # a + fp16(b - a) = b up to the difference's float16 rounding
        torch.testing.assert_close(got[key], target[key], rtol=0, atol=2e-3)


def test_lora_save_standard_rank_and_bias_switch(tmp_path):
    ctx = make_context(tmp_path, "sd1")
    a, clip_a, _ = L.checkpoint_loader_simple(ckpt_name="sd1.safetensors", context=ctx)
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "b.safetensors", "sd1", seed=9)
    b, clip_b, _ = L.checkpoint_loader_simple(ckpt_name="b.safetensors", context=ctx)
    (diff,) = M.model_merge_subtract(model1=b, model2=a, multiplier=1.0)
    (clip_diff,) = M.clip_merge_subtract(clip1=clip_b, clip2=clip_a, multiplier=1.0)
    S.lora_save(filename_prefix="l", rank=4, lora_type="standard", bias_diff=False, model_diff=diff,
                text_encoder_diff=clip_diff, context=ctx)  # fmt: skip
    lora = load_file(str(tmp_path / "output" / "l_00001_.safetensors"))
    assert {k.rsplit(".", 2)[-2] for k in lora} == {"lora_up", "lora_down"}
    down = lora["diffusion_model.out.2.lora_down.weight"]
    assert down.shape[0] == 4 and down.shape[1:] == patched_state_dict(a)["out.2.weight"].shape[1:]
    q = "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight"
    assert lora[q].shape == (32, 4)
    S.lora_save(
        filename_prefix="l", rank=4, lora_type="standard", bias_diff=True, model_diff=diff, context=ctx
    )
    with_bias = load_file(str(tmp_path / "output" / "l_00002_.safetensors"))
    assert "diffusion_model.out.2.diff_b" in with_bias and "diffusion_model.out.0.diff" in with_bias
    assert S.lora_save(filename_prefix="l", rank=4, lora_type="standard", bias_diff=True, context=ctx).ui == {
        "models": []
    }


@pytest.mark.skipif(not REFERENCE.is_file(), reason="ComfyUI reference /object_info not in this checkout")
def test_saving_schemas_equal_comfyui(tmp_path):
    reference = load_reference(REFERENCE)
    registry = build_runtime(Folders.create(tmp_path), load_custom_nodes=False, with_models=False).registry
    names = ["CheckpointSave", "ModelSave", "CLIPSave", "VAESave", "LoraSave"]
    problems = {n: schema_differences(registry.node_info(n), reference[n]) for n in names}
    assert {n: p for n, p in problems.items() if p} == {}
    assert (
        registry.node_info("CheckpointSave")["input"]["hidden"]
        == reference["CheckpointSave"]["input"]["hidden"]
    )


def test_merge_and_save_workflow_through_the_executor(tmp_path):
    """An API workflow: two checkpoints, ModelMergeSimple, CheckpointSave; the executor fills the hidden
    prompt and extra_pnginfo, and the saved file reloads as the blend."""
    ck = tmp_path / "models" / "checkpoints"
    write_tiny_checkpoint(ck / "a.safetensors", "sd1", seed=1)
    write_tiny_checkpoint(ck / "b.safetensors", "sd1", seed=2)
    runtime = build_runtime(Folders.create(tmp_path), load_custom_nodes=False)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {
            "class_type": "ModelMergeSimple",
            "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.4},
        },
        "4": {
            "class_type": "CheckpointSave",
            "inputs": {
                "model": ["3", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "filename_prefix": "checkpoints/merged",
            },
        },
    }
    result = runtime.executor.run(
        parse_api_workflow(prompt), extra_data={"extra_pnginfo": {"workflow": WORKFLOW}}
    )
    assert result.status == "success", result.errors
    path = tmp_path / "output" / "checkpoints" / "merged_00001_.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prompt"]) == prompt and json.loads(meta["workflow"]) == WORKFLOW
    written = load_file(str(path))
    w1 = tiny_single_file_state_dict(ModelFamily.SD1, seed=1)
    w2 = tiny_single_file_state_dict(ModelFamily.SD1, seed=2)
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    torch.testing.assert_close(written[key], 0.4 * w1[key] + 0.6 * w2[key], rtol=1e-6, atol=1e-6)
