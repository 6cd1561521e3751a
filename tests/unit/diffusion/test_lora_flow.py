"""LoRA on the SD3/SD3.5 (MMDiT) and FLUX.1 transformers: every key style people ship (ComfyUI/native,
kohya, diffusers/PEFT, OneTrainer) applied through LoraLoaderModelOnly on tiny real-layout models gives
W + strength * alpha/rank * up @ down on the right rows, with diffusers' split q/k/v (and Flux's proj_mlp)
landing at their offsets in the fused weights and diffusers' scale/shift order swapped back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.models import flux, mmdit
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.flow_checkpoints import write_flow_file
from tests.unit.nodes.node_support import builtin, node_context

L, LORA = builtin("loaders"), builtin("lora")
RANK, ALPHA, STRENGTH = 4, 2.0, 0.7
FILES = {"flux": "flux1-dev.safetensors", "sd3": "sd3.5_medium.safetensors"}


@pytest.fixture()
def ctx(tmp_path: Path) -> Any:
    dm = tmp_path / "models" / "diffusion_models"
    write_flow_file(dm / FILES["flux"], "flux", config=flux.TINY, layout="diffusion_model")
    write_flow_file(dm / FILES["sd3"], "sd3", config=mmdit.TINY_X, layout="diffusion_model")
    (tmp_path / "models" / "loras").mkdir(parents=True)
    folders = Folders.create(tmp_path)
    return node_context(folders=folders, manager=ModelManager(select_device(MemoryOptions())))[0]


def _pair(rows: int, cols: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, RANK, generator=gen), torch.randn(RANK, cols, generator=gen)


def _lora_file(ctx: Any, name: str, tensors: dict[str, torch.Tensor]) -> str:
    save_file(tensors, str(ctx.folders.roots("loras")[0] / name))
    return name


def _patched(
    ctx: Any, family: str, lora: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    (model,) = L.unet_loader(FILES[family], "default", context=ctx)
    base = {k: v.detach().clone() for k, v in model.transformer.state_dict().items()}
    out = LORA.lora_loader_model_only(model, lora, STRENGTH, context=ctx)
    patched_model = out.values[0]
    patched_model.patcher.apply()
    try:
        after = {k: v.detach().clone() for k, v in patched_model.transformer.state_dict().items()}
    finally:
        patched_model.patcher.remove()
    assert torch.equal(model.transformer.img_in.weight if family == "flux" else model.transformer.x_embedder.proj.weight,
                       base["img_in.weight" if family == "flux" else "x_embedder.proj.weight"])  # fmt: skip
    return base, after, out.ui["text"][0]


def _expected(
    base: dict[str, torch.Tensor], parts: list[tuple[str, int, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """`parts`: (our key, first row, delta rows) -> the weights the LoRA should give."""
    out = {k: v.clone() for k, v in base.items()}
    for key, row, delta in parts:
        out[key][row : row + delta.shape[0]] += STRENGTH * delta.reshape(-1, *out[key].shape[1:])
    return out


def _check(
    base: dict[str, torch.Tensor], after: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed == {k for k in base if not torch.equal(base[k], expected[k])}
    for k in changed:
        torch.testing.assert_close(after[k], expected[k], rtol=1e-5, atol=1e-5)


# (style name, prefix for our module path, dots -> underscores, up suffix, down suffix)
NATIVE_STYLES = [
    ("comfyui", "diffusion_model.", False, ".lora_up.weight", ".lora_down.weight"),
    ("transformer", "transformer.", False, ".lora_B.weight", ".lora_A.weight"),
    ("kohya", "lora_unet_", True, ".lora_up.weight", ".lora_down.weight"),
]
NATIVE_MODULES = {
    "flux": [
        "double_blocks.0.img_attn.qkv",
        "double_blocks.0.txt_mlp.2",
        "single_blocks.1.linear1",
        "img_in",
    ],
    "sd3": ["joint_blocks.0.x_block.attn2.qkv", "joint_blocks.2.context_block.attn.qkv", "context_embedder"],
}


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("style", NATIVE_STYLES, ids=[s[0] for s in NATIVE_STYLES])
def test_native_and_kohya_names_patch_the_whole_weight(ctx: Any, family: str, style: tuple[Any, ...]) -> None:
    name, prefix, flat, up_s, down_s = style
    gen = torch.Generator().manual_seed(1)
    (model,) = L.unet_loader(FILES[family], "default", context=ctx)
    shapes = {k: v.shape for k, v in model.transformer.state_dict().items()}
    tensors, parts = {}, []
    for m in NATIVE_MODULES[family]:
        rows, cols = shapes[m + ".weight"]
        up, down = _pair(rows, cols, gen)
        lora_name = prefix + (m.replace(".", "_") if flat else m)
        tensors.update(
            {lora_name + up_s: up, lora_name + down_s: down, lora_name + ".alpha": torch.tensor(ALPHA)}
        )
        parts.append((m + ".weight", 0, up @ down * ALPHA / RANK))
    base, after, report = _patched(ctx, family, _lora_file(ctx, f"{family}_{name}.safetensors", tensors))
    assert "not loaded" not in report
    _check(base, after, _expected(base, parts))


def _diffusers_flux(shapes: dict[str, torch.Size], gen: torch.Generator) -> tuple[dict[str, Any], list[Any]]:
    """diffusers/PEFT Flux LoRA on split q/k/v, proj_mlp, norm_out and a plain module; alpha from PEFT
    files is absent (scale 1) except where given."""
    h = flux.TINY.hidden_size
    tensors: dict[str, torch.Tensor] = {}
    parts: list[Any] = []

    def add(dname: str, rows: int, cols: int, key: str, row: int, alpha: float | None = None) -> torch.Tensor:
        up, down = _pair(rows, cols, gen)
        tensors[f"transformer.{dname}.lora_B.weight"], tensors[f"transformer.{dname}.lora_A.weight"] = (
            up,
            down,
        )
        if alpha is not None:
            tensors[f"transformer.{dname}.alpha"] = torch.tensor(alpha)
        d = up @ down * ((alpha / RANK) if alpha is not None else 1.0)
        parts.append((key, row, d))
        return d

    for i, proj in enumerate(("to_q", "to_k", "to_v")):
        add(f"transformer_blocks.0.attn.{proj}", h, h, "double_blocks.0.img_attn.qkv.weight", i * h, ALPHA)
        add(f"single_transformer_blocks.1.attn.{proj}", h, h, "single_blocks.1.linear1.weight", i * h)
    for i, proj in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
        add(f"transformer_blocks.0.attn.{proj}", h, h, "double_blocks.0.txt_attn.qkv.weight", i * h)
    mlp = shapes["single_blocks.0.linear1.weight"][0] - 3 * h
    add("single_transformer_blocks.0.proj_mlp", mlp, h, "single_blocks.0.linear1.weight", 3 * h, ALPHA)
    add("transformer_blocks.0.ff_context.net.2", h, 4 * h, "double_blocks.0.txt_mlp.2.weight", 0)
    add("context_embedder", h, flux.TINY.context_in_dim, "txt_in.weight", 0)
    d = add("norm_out.linear", 2 * h, h, "final_layer.adaLN_modulation.1.weight", 0)
    parts[-1] = ("final_layer.adaLN_modulation.1.weight", 0, torch.cat([d[h:], d[:h]]))  # scale/shift swapped
    return tensors, parts


def test_diffusers_flux_lora_lands_on_fused_rows_at_their_offsets(ctx: Any) -> None:
    (model,) = L.unet_loader(FILES["flux"], "default", context=ctx)
    shapes = {k: v.shape for k, v in model.transformer.state_dict().items()}
    tensors, parts = _diffusers_flux(shapes, torch.Generator().manual_seed(2))
    base, after, report = _patched(ctx, "flux", _lora_file(ctx, "flux_diffusers.safetensors", tensors))
    assert "not loaded" not in report
    _check(base, after, _expected(base, parts))


@pytest.mark.parametrize("style", ["transformer.", "lora_transformer_", "base_model.model."])
def test_diffusers_sd3_lora_incl_dual_attention_and_last_context_block(ctx: Any, style: str) -> None:
    h, gen = mmdit.TINY_X.hidden_size, torch.Generator().manual_seed(3)
    flat = style == "lora_transformer_"
    up_s, down_s = (".lora_up.weight", ".lora_down.weight") if flat else (".lora_B.weight", ".lora_A.weight")
    tensors: dict[str, torch.Tensor] = {}
    parts: list[Any] = []
    items = [(f"transformer_blocks.0.attn2.{p}", h, h, "joint_blocks.0.x_block.attn2.qkv.weight", i * h)
             for i, p in enumerate(("to_q", "to_k", "to_v"))]  # fmt: skip
    items += [(f"transformer_blocks.1.attn.{p}", h, h, "joint_blocks.1.context_block.attn.qkv.weight", i * h)
              for i, p in enumerate(("add_q_proj", "add_k_proj", "add_v_proj"))]  # fmt: skip
    items += [("transformer_blocks.2.ff.net.0.proj", 4 * h, h, "joint_blocks.2.x_block.mlp.fc1.weight", 0)]
    for dname, rows, cols, key, row in items:
        up, down = _pair(rows, cols, gen)
        n = style + (dname.replace(".", "_") if flat else dname)
        tensors.update({n + up_s: up, n + down_s: down, n + ".alpha": torch.tensor(ALPHA)})
        parts.append((key, row, up @ down * ALPHA / RANK))
    # diffusers' last (context_pre_only) block keeps its 2-chunk context modulation as scale, shift
    last = "joint_blocks.2.context_block.adaLN_modulation.1.weight"
    (model,) = L.unet_loader(FILES["sd3"], "default", context=ctx)
    rows = model.transformer.state_dict()[last].shape[0]
    up, down = _pair(rows, h, gen)
    n = style + (
        "transformer_blocks_2_norm1_context_linear" if flat else "transformer_blocks.2.norm1_context.linear"
    )
    tensors.update({n + up_s: up, n + down_s: down})
    d = up @ down
    parts.append((last, 0, torch.cat([d[rows // 2 :], d[: rows // 2]])))
    base, after, report = _patched(ctx, "sd3", _lora_file(ctx, f"sd3_{len(style)}.safetensors", tensors))
    assert "not loaded" not in report
    _check(base, after, _expected(base, parts))


def test_wrong_keys_are_reported_and_change_nothing(ctx: Any) -> None:
    gen = torch.Generator().manual_seed(4)
    up, down = _pair(32, 32, gen)
    tensors = {
        "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": down,  # no block 7 in the tiny Flux
        "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": up,
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": up.clone(),  # an SD1 UNet module
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": down.clone(),
    }
    base, after, report = _patched(ctx, "flux", _lora_file(ctx, "wrong.safetensors", tensors))
    assert "4 lora key(s) not loaded" in report
    assert "transformer.transformer_blocks.7.attn.to_q.lora_A.weight" in report
    assert all(torch.equal(base[k], after[k]) for k in base)


TEXT_STYLES = {
    # family -> [(LoRA module name, our CLIP-handle module path)]
    "sd3": [
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "clip_l.towers.clip_l.text_model.encoder.layers.0.self_attn.q_proj"),
        ("text_encoder_2.text_model.encoder.layers.0.mlp.fc1", "clip_g.towers.clip_g.text_model.encoder.layers.0.mlp.fc1"),
        ("lora_te3_encoder_block_0_layer_0_SelfAttention_q", "t5xxl.t5xxl.encoder.block.0.layer.0.SelfAttention.q"),
    ],
    "flux": [
        ("lora_te1_text_model_encoder_layers_0_self_attn_out_proj", "clip_l.towers.clip_l.text_model.encoder.layers.0.self_attn.out_proj"),
        ("lora_te2_encoder_block_0_layer_1_DenseReluDense_wo", "t5xxl.t5xxl.encoder.block.0.layer.1.DenseReluDense.wo"),
        ("text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.v", "t5xxl.t5xxl.encoder.block.0.layer.0.SelfAttention.v"),
    ],
}  # fmt: skip


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_text_encoder_parts_patch_clip_and_t5_with_loraloader(ctx: Any, tmp_path: Path, family: str) -> None:
    write_flow_file(tmp_path / "models" / "checkpoints" / "aio.safetensors", family)
    (model, clip, _) = L.checkpoint_loader_simple("aio.safetensors", context=ctx)
    base = {k: v.detach().clone() for k, v in clip.patcher.module.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    tensors, parts = {}, []
    for lora_name, ours in TEXT_STYLES[family]:
        rows, cols = base[ours + ".weight"].shape
        up, down = _pair(rows, cols, gen)
        tensors.update({lora_name + ".lora_up.weight": up, lora_name + ".lora_down.weight": down,
                        lora_name + ".alpha": torch.tensor(ALPHA)})  # fmt: skip
        parts.append((ours + ".weight", 0, up @ down * ALPHA / RANK))
    name = _lora_file(ctx, f"te_{family}.safetensors", tensors)
    out = LORA.lora_loader(model, clip, name, 1.0, STRENGTH, context=ctx)
    assert "not loaded" not in out.ui["text"][0]
    new_clip = out.values[1]
    new_clip.patcher.apply()
    try:
        after = {k: v.detach().clone() for k, v in new_clip.patcher.module.state_dict().items()}
    finally:
        new_clip.patcher.remove()
    _check(base, after, _expected(base, parts))


def test_flux_kohya_lora_split_by_diffusers_lands_where_the_fused_rows_were() -> None:
    """diffusers' own kohya -> diffusers Flux LoRA conversion (real FLUX.1-dev sizes, which it assumes)
    splits fused qkv / linear1 LoRAs into to_q/k/v/proj_mlp; our map puts each split part back on the
    rows it came from (marked by the up matrix's first column = row index), with alpha kept."""
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    from engine.diffusion.lora import load_lora, unet_key_map
    from engine.diffusion.lora.keymap_flow import SlicedPatch, SumPatch

    h, r, gen = flux.FLUX_DEV.hidden_size, 2, torch.Generator().manual_seed(6)
    kohya: dict[str, torch.Tensor] = {}
    fused = {"double_blocks.0.img_attn.qkv": 3 * h, "double_blocks.1.txt_attn.qkv": 3 * h,
             "single_blocks.3.linear1": 7 * h, "double_blocks.0.img_mlp.2": h}  # fmt: skip
    for module, rows in fused.items():
        up = torch.stack([torch.arange(rows, dtype=torch.float32), torch.randn(rows, generator=gen)], 1)
        name = "lora_unet_" + module.replace(".", "_")
        kohya.update({name + ".lora_up.weight": up, name + ".lora_down.weight": torch.randn(r, h, generator=gen),
                      name + ".alpha": torch.tensor(1.5)})  # fmt: skip
    converted = conversion._convert_kohya_flux_lora_to_diffusers(dict(kohya))
    keys = ["model." + k for k in flux.Flux(flux.FLUX_DEV, device="meta").state_dict()]
    result = load_lora(converted, {"unet": unet_key_map(keys)})
    assert result.unmatched == []
    assert set(result.patches["unet"]) == {f"model.{m}.weight" for m in fused}
    for module, rows in fused.items():
        patch = result.patches["unet"][f"model.{module}.weight"]
        parts = patch.parts if isinstance(patch, SumPatch) else (patch,)
        covered = []
        for p in parts:
            inner = p.inner if isinstance(p, SlicedPatch) else p
            n = inner.up.shape[0]
            start = 0 if not isinstance(p, SlicedPatch) else (rows - n if p.part < 0 else p.part * n)
            assert torch.equal(inner.up[:, 0], torch.arange(start, start + n, dtype=torch.float32))
            name = "lora_unet_" + module.replace(".", "_")
            want = (
                kohya[name + ".lora_up.weight"][start : start + n]
                @ kohya[name + ".lora_down.weight"]
                * 1.5
                / r
            )
            torch.testing.assert_close(inner.delta(torch.empty(0)), want, rtol=1e-5, atol=1e-3)
            covered.append((start, n))
        assert sorted(covered)[0][0] == 0 and sum(n for _, n in covered) == rows


def test_xlabs_flux_lora_names(ctx: Any) -> None:
    # XLabs: processor.qkv_lora1/2 (image / text qkv), proj_lora1/2, and a single block's qkv_lora on the
    # q/k/v rows of linear1 only; no alpha -> scale 1.
    h, gen = flux.TINY.hidden_size, torch.Generator().manual_seed(6)
    items = [
        ("double_blocks.0.processor.qkv_lora1", 3 * h, h, "double_blocks.0.img_attn.qkv.weight"),
        ("double_blocks.0.processor.qkv_lora2", 3 * h, h, "double_blocks.0.txt_attn.qkv.weight"),
        ("double_blocks.0.processor.proj_lora1", h, h, "double_blocks.0.img_attn.proj.weight"),
        ("double_blocks.0.processor.proj_lora2", h, h, "double_blocks.0.txt_attn.proj.weight"),
        ("single_blocks.1.processor.qkv_lora", 3 * h, h, "single_blocks.1.linear1.weight"),
        (
            "single_blocks.0.processor.proj_lora",
            h,
            h + flux.TINY.mlp_hidden,
            "single_blocks.0.linear2.weight",
        ),
    ]
    tensors, parts = {}, []
    for name, rows, cols, key in items:
        up, down = _pair(rows, cols, gen)
        tensors.update({f"{name}.up.weight": up, f"{name}.down.weight": down})
        parts.append((key, 0, up @ down))
    base, after, report = _patched(ctx, "flux", _lora_file(ctx, "flux_xlabs.safetensors", tensors))
    assert "not loaded" not in report
    _check(base, after, _expected(base, parts))


def test_bias_keys_patch_the_biases(ctx: Any) -> None:
    # diff_b on a native name (whole bias) and on a diffusers q/k/v name (its rows of the fused bias); a
    # LoRA's up-projection bias (lora_B.bias) is added as a plain difference, not scaled by alpha/rank.
    h, gen = flux.TINY.hidden_size, torch.Generator().manual_seed(7)
    up, down = _pair(h, h, gen)
    b_full, b_v, b_k = (
        torch.randn(3 * h, generator=gen),
        torch.randn(h, generator=gen),
        torch.randn(h, generator=gen),
    )
    tensors = {
        "diffusion_model.double_blocks.0.img_attn.qkv.diff_b": b_full,
        "transformer.single_transformer_blocks.1.attn.to_v.diff_b": b_v,
        "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight": down,
        "transformer.transformer_blocks.0.attn.add_k_proj.lora_B.weight": up,
        "transformer.transformer_blocks.0.attn.add_k_proj.lora_B.bias": b_k,
        "transformer.transformer_blocks.0.attn.add_k_proj.alpha": torch.tensor(ALPHA),
    }
    parts = [
        ("double_blocks.0.img_attn.qkv.bias", 0, b_full),
        ("single_blocks.1.linear1.bias", 2 * h, b_v),
        ("double_blocks.0.txt_attn.qkv.weight", h, up @ down * ALPHA / RANK),
        ("double_blocks.0.txt_attn.qkv.bias", h, b_k),
    ]
    base, after, report = _patched(ctx, "flux", _lora_file(ctx, "flux_bias.safetensors", tensors))
    assert "not loaded" not in report
    _check(base, after, _expected(base, parts))


def test_bias_keys_on_sd3(ctx: Any) -> None:
    h, gen = mmdit.TINY_X.hidden_size, torch.Generator().manual_seed(8)
    b_fc1, b_q = torch.randn(4 * h, generator=gen), torch.randn(h, generator=gen)
    tensors = {
        "lora_unet_joint_blocks_1_x_block_mlp_fc1.diff_b": b_fc1,
        "transformer.transformer_blocks.0.attn2.to_q.diff_b": b_q,
    }
    parts = [
        ("joint_blocks.1.x_block.mlp.fc1.bias", 0, b_fc1),
        ("joint_blocks.0.x_block.attn2.qkv.bias", 0, b_q),
    ]
    base, after, report = _patched(ctx, "sd3", _lora_file(ctx, "sd3_bias.safetensors", tensors))
    assert "not loaded" not in report
    _check(base, after, _expected(base, parts))
