"""The adapter nodes on tiny real-format files, through the same node functions the executor calls."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.models.controlnet import ControlNetModel
from engine.diffusion.models.upscalers import SRVGGNetCompact
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

CN, L, LO, PP, UP = (builtin(name) for name in ("controlnet", "loaders", "lora", "preprocessors", "upscale"))


Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters_env")
    models = root / "models"
    write_tiny_checkpoint(models / "checkpoints" / "sd1.safetensors", "sd1", seed=1)
    folders = Folders.create(root)
    ctx = node_context(folders=folders, manager=ModelManager(select_device(MemoryOptions())))[0]
    model, clip, vae = L.checkpoint_loader_simple(ckpt_name="sd1.safetensors", context=ctx)
    w = model.unet.state_dict()[f"{Q}.weight"]
    g = torch.Generator().manual_seed(0)
    name = "lora_unet_" + Q.replace(".", "_")
    (models / "loras").mkdir(parents=True, exist_ok=True)
    save_file(
        {
            f"{name}.lora_up.weight": torch.randn(w.shape[0], 2, generator=g),
            f"{name}.lora_down.weight": torch.randn(2, w.shape[1], generator=g),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(1),
            "lora_unet_no_such_layer.lora_up.weight": torch.zeros(1),
        },
        models / "loras" / "l.safetensors",
    )
    cn = ControlNetModel(model.unet.config)
    (models / "controlnet").mkdir(parents=True, exist_ok=True)
    save_file(
        {f"control_model.{k}": v.contiguous() for k, v in cn.state_dict().items()},
        models / "controlnet" / "c.safetensors",
    )
    (models / "upscale_models").mkdir(parents=True, exist_ok=True)
    torch.save(SRVGGNetCompact(nf=4, num_conv=1, scale=2).state_dict(), models / "upscale_models" / "x2.pth")
    return ctx, model, clip


def test_lora_loader_patches_clones_and_reports(env):
    ctx, model, clip = env
    out = LO.lora_loader(
        model=model, clip=clip, lora_name="l.safetensors", strength_model=1.0, strength_clip=1.0, context=ctx
    )
    new_model, new_clip = out.values
    assert new_model is not model and new_clip is not clip
    assert f"{Q}.weight" in new_model.patcher.patches and not model.patcher.patches
    text = out.ui["text"][0]
    assert "lora_unet_no_such_layer.lora_up.weight" in text and "not loaded" in text
    assert new_model.unet is model.unet  # weights shared, not copied
    only = LO.lora_loader_model_only(model=model, lora_name="l.safetensors", strength_model=0.5, context=ctx)
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight" in only.ui["text"][0]
    assert LO.lora_loader_model_only(
        model=model, lora_name="l.safetensors", strength_model=0.0, context=ctx
    ) == (model,)


def test_controlnet_nodes_chain_on_both_sides(env):
    ctx, model, clip = env
    (cnet,) = CN.controlnet_loader(control_net_name="c.safetensors", context=ctx)
    assert cnet.kind == "controlnet"
    pos = [[torch.zeros(1, 77, 32), {}]]
    neg = [[torch.zeros(1, 77, 32), {}]]
    img = torch.rand(1, 64, 64, 3)
    p1, n1 = CN.controlnet_apply_advanced(pos, neg, cnet, img, 0.8, 0.1, 0.9)
    assert p1[0][1]["control"] is n1[0][1]["control"]  # one application: pos/neg batch together
    assert p1[0][1]["control"].start_percent == 0.1 and pos[0][1] == {}
    p2, _ = CN.controlnet_apply_advanced(p1, n1, cnet, img, 0.5, 0.0, 1.0)
    assert p2[0][1]["control"].previous is p1[0][1]["control"]
    assert CN.controlnet_apply(pos, cnet, img, 0.0) == (pos,)
    bad = ctx.folders.full_path("controlnet", "c.safetensors").parent / "bad.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a ControlNet"):
        CN.diff_controlnet_loader(model=model, control_net_name="bad.safetensors", context=ctx)


def test_upscale_and_canny_nodes(env):
    ctx, _, _ = env
    (um,) = UP.upscale_model_loader(model_name="x2.pth", context=ctx)
    assert um.scale == 2
    (out,) = UP.image_upscale_with_model(upscale_model=um, image=torch.rand(1, 10, 12, 3), context=ctx)
    assert out.shape == (1, 20, 24, 3) and out.min() >= 0 and out.max() <= 1
    img = torch.zeros(1, 32, 32, 3)
    img[:, 8:24, 8:24] = 1.0
    (edges,) = PP.canny(img, 0.4, 0.8)
    assert edges.shape == (1, 32, 32, 3) and edges[0, 12:20, 12:20].sum() == 0 and edges.sum() > 0
