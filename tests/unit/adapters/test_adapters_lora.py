"""LoRA-family files in each layout, written here with tiny random tensors, applied through the
memory patcher; expected weights are computed in the test from the published formulas."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import engine.diffusion.checkpoints.loader as loader
import tests.factories.checkpoints as synthetic
from engine.diffusion.lora import load_lora_file, text_encoder_key_map, unet_key_map
from engine.memory.patcher import ModelPatcher

Q_ORIG = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # tiny SD1 UNet, level 0 attention
Q_DIFF = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV_ORIG = "input_blocks.1.0.in_layers.2"
CONV_DIFF = "down_blocks.0.resnets.0.conv1"
TE_Q = "towers.clip_l.encoder.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    path = synthetic.write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "sd1.safetensors", "sd1", seed=3)
    return loader.load_checkpoint(path)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    path = synthetic.write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "xl.safetensors", "sdxl", seed=4)
    return loader.load_checkpoint(path)


def targets(ck):
    return {
        "unet": unet_key_map(ck.unet.state_dict().keys()),
        "clip": text_encoder_key_map(ck.text_encoder.state_dict().keys()),
    }


def param(module, key) -> torch.Tensor:
    return module.state_dict()[key].detach().clone()


def patched(module, patches, strength):
    p = ModelPatcher(module)
    p.add_patches(patches, strength)
    p.apply()
    return p


def rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 0.1


def test_kohya_diffusers_names_unet_and_text_encoder(tmp_path, sd1):
    w_q = param(sd1.unet, f"{Q_ORIG}.weight")
    w_c = param(sd1.unet, f"{CONV_ORIG}.weight")
    w_t = param(sd1.text_encoder, f"{TE_Q}.weight")
    r = 2
    up_q, down_q = rand(w_q.shape[0], r, seed=1), rand(r, w_q.shape[1], seed=2)
    up_c, down_c = rand(w_c.shape[0], r, 1, 1, seed=3), rand(r, w_c.shape[1], 3, 3, seed=4)
    up_t, down_t = rand(w_t.shape[0], r, seed=5), rand(r, w_t.shape[1], seed=6)
    kq = "lora_unet_" + Q_DIFF.replace(".", "_")
    kc = "lora_unet_" + CONV_DIFF.replace(".", "_")
    kt = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    sd = {
        f"{kq}.lora_up.weight": up_q, f"{kq}.lora_down.weight": down_q, f"{kq}.alpha": torch.tensor(1.0),
        f"{kc}.lora_up.weight": up_c, f"{kc}.lora_down.weight": down_c, f"{kc}.alpha": torch.tensor(4.0),
        f"{kt}.lora_up.weight": up_t, f"{kt}.lora_down.weight": down_t,
        "lora_unet_nonexistent_block.lora_up.weight": torch.zeros(2, 2),
        "lora_unet_nonexistent_block.lora_down.weight": torch.zeros(2, 2),
    }  # fmt: skip
    path = tmp_path / "kohya.safetensors"
    save_file(sd, path)
    res = load_lora_file(path, targets(sd1))
    assert res.unmatched == [
        "lora_unet_nonexistent_block.lora_down.weight",
        "lora_unet_nonexistent_block.lora_up.weight",
    ]
    assert "not loaded" in res.summary()
    assert set(res.patches["unet"]) == {f"{Q_ORIG}.weight", f"{CONV_ORIG}.weight"}
    assert set(res.patches["clip"]) == {f"{TE_Q}.weight"}

    s = 0.7
    pu = patched(sd1.unet, res.patches["unet"], s)
    pc = patched(sd1.text_encoder, res.patches["clip"], -1.3)
    try:
        exp_q = w_q + s * (1.0 / r) * (up_q @ down_q)
        exp_c = w_c + s * (4.0 / r) * (up_c.flatten(1) @ down_c.flatten(1)).reshape(w_c.shape)
        exp_t = w_t + (-1.3) * (up_t @ down_t)  # no alpha -> scale 1
        torch.testing.assert_close(param(sd1.unet, f"{Q_ORIG}.weight"), exp_q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(param(sd1.unet, f"{CONV_ORIG}.weight"), exp_c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(param(sd1.text_encoder, f"{TE_Q}.weight"), exp_t, rtol=1e-5, atol=1e-6)
    finally:
        pu.remove()
        pc.remove()
    # Unloading restores the exact base weights.
    assert torch.equal(param(sd1.unet, f"{Q_ORIG}.weight"), w_q)
    assert torch.equal(param(sd1.text_encoder, f"{TE_Q}.weight"), w_t)


def test_peft_and_diffusers_layouts_and_stacking(tmp_path, sd1):
    w = param(sd1.unet, f"{Q_ORIG}.weight")
    r = 3
    a1, b1 = rand(r, w.shape[1], seed=7), rand(w.shape[0], r, seed=8)
    a2, b2 = rand(r, w.shape[1], seed=9), rand(w.shape[0], r, seed=10)
    save_file(
        {f"unet.{Q_DIFF}.lora_A.weight": a1, f"unet.{Q_DIFF}.lora_B.weight": b1}, tmp_path / "p.safetensors"
    )
    save_file(
        {f"unet.{Q_DIFF}.lora.down.weight": a2, f"unet.{Q_DIFF}.lora.up.weight": b2},
        tmp_path / "d.safetensors",
    )
    l1 = load_lora_file(tmp_path / "p.safetensors", targets(sd1))
    l2 = load_lora_file(tmp_path / "d.safetensors", targets(sd1))
    assert l1.unmatched == [] and l2.unmatched == []
    base = ModelPatcher(sd1.unet)
    m1 = base.clone()
    m1.add_patches(l1.patches["unet"], 0.5)
    m2 = m1.clone()
    m2.add_patches(l2.patches["unet"], -2.0)
    m2.apply()
    try:
        expected = w + 0.5 * (b1 @ a1) - 2.0 * (b2 @ a2)
        torch.testing.assert_close(param(sd1.unet, f"{Q_ORIG}.weight"), expected, rtol=1e-5, atol=1e-6)
        m1.apply()  # switching clones swaps the patch set on the same base module
        torch.testing.assert_close(
            param(sd1.unet, f"{Q_ORIG}.weight"), w + 0.5 * (b1 @ a1), rtol=1e-5, atol=1e-6
        )
    finally:
        m1.remove()
    assert torch.equal(param(sd1.unet, f"{Q_ORIG}.weight"), w)
    # Clones never copied the module: they patch one shared set of parameters.
    assert m1.module is m2.module is sd1.unet


def test_loha_lokr_and_diff(tmp_path, sd1):
    wq = param(sd1.unet, f"{Q_ORIG}.weight")
    wc = param(sd1.unet, f"{CONV_ORIG}.weight")
    bias_key = f"{CONV_ORIG}.bias"
    b = param(sd1.unet, bias_key)
    out, inp = wq.shape
    r = 2
    h = {n: rand(*s, seed=20 + i) for i, (n, s) in enumerate(
        [("w1a", (out, r)), ("w1b", (r, inp)), ("w2a", (out, r)), ("w2b", (r, inp))])}  # fmt: skip
    lq = "lora_unet_" + Q_ORIG.replace(".", "_")  # SDXL-style kohya name (original layout)
    lc = "lora_unet_" + CONV_DIFF.replace(".", "_")
    # LoKr on the conv: kron(w1 (4, 2), w2_a @ w2_b -> (out/4, in/2 * 3 * 3)).
    co, ci = wc.shape[:2]
    w1 = rand(4, 2, seed=30)
    w2a, w2b = rand(co // 4, r, seed=31), rand(r, ci // 2, 3, 3, seed=32)
    sd = {
        f"{lq}.hada_w1_a": h["w1a"], f"{lq}.hada_w1_b": h["w1b"], f"{lq}.hada_w2_a": h["w2a"],
        f"{lq}.hada_w2_b": h["w2b"], f"{lq}.alpha": torch.tensor(1.0),
        f"{lc}.lokr_w1": w1, f"{lc}.lokr_w2_a": w2a, f"{lc}.lokr_w2_b": w2b, f"{lc}.alpha": torch.tensor(1.0),
        f"{lc}.diff_b": rand(*b.shape, seed=33),
        f"{lc}.dora_scale": torch.ones(co),  # DoRA is not implemented: must be reported
    }  # fmt: skip
    save_file(sd, tmp_path / "lyco.safetensors")
    res = load_lora_file(tmp_path / "lyco.safetensors", targets(sd1))
    assert res.unmatched == [f"{lc}.dora_scale"]
    p = patched(sd1.unet, res.patches["unet"], 0.8)
    try:
        loha = (h["w1a"] @ h["w1b"]) * (h["w2a"] @ h["w2b"]) * (1.0 / r)
        torch.testing.assert_close(param(sd1.unet, f"{Q_ORIG}.weight"), wq + 0.8 * loha, rtol=1e-5, atol=1e-6)
        w2 = (w2a @ w2b.flatten(1)).reshape(co // 4, ci // 2, 3, 3)
        lokr = torch.stack([torch.stack([w1[i, j] * w2 for j in range(2)], 1) for i in range(4)], 0)
        lokr = lokr.reshape(co, ci, 3, 3) * (1.0 / r)  # (i, a, j, b) order = kron index i*o2+a, j*i2+b
        torch.testing.assert_close(
            param(sd1.unet, f"{CONV_ORIG}.weight"), wc + 0.8 * lokr, rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            param(sd1.unet, bias_key), b + 0.8 * sd[f"{lc}.diff_b"], rtol=1e-5, atol=1e-6
        )
    finally:
        p.remove()
    assert torch.equal(param(sd1.unet, f"{CONV_ORIG}.weight"), wc)


def test_sdxl_te1_te2_and_original_unet_names(tmp_path, sdxl):
    t = targets(sdxl)
    te = sdxl.text_encoder.state_dict()
    k_l = "towers.clip_l.encoder.layers.0.self_attn.k_proj.weight"
    k_g = "towers.clip_g.text_model.encoder.layers.0.self_attn.k_proj.weight"
    unet_key = next(k for k in sdxl.unet.state_dict() if k.startswith("input_blocks.") and "attn2.to_k" in k)
    mod = unet_key[: -len(".weight")]
    sd = {}
    for name, w in [
        ("lora_te1_text_model_encoder_layers_0_self_attn_k_proj", te[k_l]),
        ("lora_te2_text_model_encoder_layers_0_self_attn_k_proj", te[k_g]),
        ("lora_unet_" + mod.replace(".", "_"), sdxl.unet.state_dict()[unet_key]),
    ]:
        sd[f"{name}.lora_up.weight"] = rand(w.shape[0], 1, seed=len(sd))
        sd[f"{name}.lora_down.weight"] = rand(1, w.shape[1], seed=len(sd) + 1)
    save_file(sd, tmp_path / "xl.safetensors")
    res = load_lora_file(tmp_path / "xl.safetensors", t)
    assert res.unmatched == []
    assert set(res.patches["clip"]) == {k_l, k_g}
    assert set(res.patches["unet"]) == {unet_key}


def test_model_only_reports_text_encoder_keys(tmp_path, sd1):
    w = param(sd1.text_encoder, f"{TE_Q}.weight")
    kt = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    save_file(
        {
            f"{kt}.lora_up.weight": rand(w.shape[0], 1, seed=1),
            f"{kt}.lora_down.weight": rand(1, w.shape[1], seed=2),
        },
        tmp_path / "te.safetensors",
    )
    res = load_lora_file(tmp_path / "te.safetensors", {"unet": unet_key_map(sd1.unet.state_dict().keys())})
    assert res.count("unet") == 0
    assert res.unmatched == [f"{kt}.lora_down.weight", f"{kt}.lora_up.weight"]
