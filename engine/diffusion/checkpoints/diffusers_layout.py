"""Explicit key mappings between the diffusers folder layout and the original single-file layout.

The original ("LDM"/CompVis, SGM for SDXL) layout is what single-file checkpoints use and what our
models' parameter names follow (``input_blocks.N.M``, ``middle_block``, ``output_blocks``; VAE
``encoder.down.I.block.J``). diffusers names the same modules structurally
(``down_blocks.I.resnets.J``, ``mid_block``, ``up_blocks``; VAE ``encoder.down_blocks.I.resnets.J``).

Both directions are built from one *block table* — a list of ``(diffusers_prefix,
original_prefix, kind)`` rows — derived from whichever key set is at hand. Deriving the table from
the keys (rather than from a fixed SD1.5 config) is what lets pruned UNets with fewer blocks per
level (BK-SDM, SSD-1B, Vega) and tiny test models convert too:

* original side: ``input_blocks.N`` are walked in order; a block with ``.0.op`` is a downsampler
  and closes a level, any other block is ``resnet (+ attention at .1)``. ``output_blocks.M`` hold a
  resnet at ``.0``, optionally an attention at ``.1`` and an upsampler at ``.1.conv``/``.2.conv``
  that closes the level (LDM ``openaimodel.py`` builds the blocks in exactly this order).
* diffusers side: levels, resnets, attentions and samplers are explicit in the names, and the
  original indices are recomputed by counting in the same order.

Text encoders: CLIP ViT-L is stored in the Hugging Face layout in both worlds (only a prefix
differs); the OpenCLIP <-> HF conversion of the ViT-H/bigG towers is in ``clip_text.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class BlockRow:
    diffusers: str
    original: str
    kind: str  # "resnet" | "attn" | "plain" | "vae_resnet" | "vae_attn"


# ---------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------

# ResBlock parameter names: diffusers ResnetBlock2D -> LDM ResBlock (in_layers = GN, SiLU, conv;
# emb_layers = SiLU, Linear; out_layers = GN, SiLU, Dropout, conv).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_RESNET_INV = {v: k for k, v in _UNET_RESNET.items()}

_UNET_FIXED = [
    BlockRow("time_embedding.linear_1", "time_embed.0", "plain"),
    BlockRow("time_embedding.linear_2", "time_embed.2", "plain"),
    BlockRow("conv_in", "input_blocks.0.0", "plain"),
    BlockRow("conv_norm_out", "out.0", "plain"),
    BlockRow("conv_out", "out.2", "plain"),
]


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _has_prefix(keys: set[str] | list[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def unet_table_from_original(keys: Iterable[str], *, label_emb_as: str = "add_embedding") -> list[BlockRow]:
    """Block table for a UNet state dict in the original layout (keys without the model prefix).

    ``label_emb_as`` names the diffusers module that holds SDXL's ``label_emb`` (``add_embedding``
    for SDXL's text_time conditioning, ``class_embedding`` for class-conditioned UNets).
    """
    ks = sorted(keys)
    rows = list(_UNET_FIXED)
    if _has_prefix(ks, "label_emb.0."):
        rows += [
            BlockRow(f"{label_emb_as}.linear_1", "label_emb.0.0", "plain"),
            BlockRow(f"{label_emb_as}.linear_2", "label_emb.0.2", "plain"),
        ]
    level, j = 0, 0
    for n in _indices(ks, r"input_blocks\.(\d+)\."):
        if n == 0:
            continue
        if _has_prefix(ks, f"input_blocks.{n}.0.op."):
            rows.append(
                BlockRow(f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{n}.0.op", "plain")
            )
            level, j = level + 1, 0
            continue
        rows.append(BlockRow(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{n}.0", "resnet"))
        if _has_prefix(ks, f"input_blocks.{n}.1."):
            rows.append(BlockRow(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{n}.1", "attn"))
        j += 1
    r = a = 0
    for n in _indices(ks, r"middle_block\.(\d+)\."):
        if _has_prefix(ks, f"middle_block.{n}.in_layers."):
            rows.append(BlockRow(f"mid_block.resnets.{r}", f"middle_block.{n}", "resnet"))
            r += 1
        else:
            rows.append(BlockRow(f"mid_block.attentions.{a}", f"middle_block.{n}", "attn"))
            a += 1
    level, j = 0, 0
    for m in _indices(ks, r"output_blocks\.(\d+)\."):
        rows.append(BlockRow(f"up_blocks.{level}.resnets.{j}", f"output_blocks.{m}.0", "resnet"))
        up_at = None
        if f"output_blocks.{m}.1.conv.weight" in ks:
            up_at = 1
        else:
            if _has_prefix(ks, f"output_blocks.{m}.1."):
                rows.append(BlockRow(f"up_blocks.{level}.attentions.{j}", f"output_blocks.{m}.1", "attn"))
            if f"output_blocks.{m}.2.conv.weight" in ks:
                up_at = 2
        if up_at is not None:
            rows.append(
                BlockRow(f"up_blocks.{level}.upsamplers.0.conv", f"output_blocks.{m}.{up_at}.conv", "plain")
            )
            level, j = level + 1, 0
        else:
            j += 1
    return rows


def unet_table_from_diffusers(keys: Iterable[str]) -> list[BlockRow]:
    """Block table for a diffusers ``UNet2DConditionModel`` state dict."""
    ks = sorted(keys)
    rows = list(_UNET_FIXED)
    for emb in ("add_embedding", "class_embedding"):
        if f"{emb}.linear_1.weight" in ks:
            rows += [
                BlockRow(f"{emb}.linear_1", "label_emb.0.0", "plain"),
                BlockRow(f"{emb}.linear_2", "label_emb.0.2", "plain"),
            ]
    n = 1
    for level in _indices(ks, r"down_blocks\.(\d+)\."):
        for j in _indices(ks, rf"down_blocks\.{level}\.resnets\.(\d+)\."):
            rows.append(BlockRow(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{n}.0", "resnet"))
            if _has_prefix(ks, f"down_blocks.{level}.attentions.{j}."):
                rows.append(BlockRow(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{n}.1", "attn"))
            n += 1
        if _has_prefix(ks, f"down_blocks.{level}.downsamplers.0."):
            rows.append(
                BlockRow(f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{n}.0.op", "plain")
            )
            n += 1
    resnets = _indices(ks, r"mid_block\.resnets\.(\d+)\.")
    attns = _indices(ks, r"mid_block\.attentions\.(\d+)\.")
    # LDM interleaves: ResBlock, SpatialTransformer, ResBlock.
    stride = 2 if attns else 1
    for r in resnets:
        rows.append(BlockRow(f"mid_block.resnets.{r}", f"middle_block.{stride * r}", "resnet"))
    for a in attns:
        rows.append(BlockRow(f"mid_block.attentions.{a}", f"middle_block.{2 * a + 1}", "attn"))
    m = 0
    for level in _indices(ks, r"up_blocks\.(\d+)\."):
        res = _indices(ks, rf"up_blocks\.{level}\.resnets\.(\d+)\.")
        for j in res:
            rows.append(BlockRow(f"up_blocks.{level}.resnets.{j}", f"output_blocks.{m}.0", "resnet"))
            has_attn = _has_prefix(ks, f"up_blocks.{level}.attentions.{j}.")
            if has_attn:
                rows.append(BlockRow(f"up_blocks.{level}.attentions.{j}", f"output_blocks.{m}.1", "attn"))
            if j == res[-1] and _has_prefix(ks, f"up_blocks.{level}.upsamplers.0."):
                at = 2 if has_attn else 1
                rows.append(
                    BlockRow(f"up_blocks.{level}.upsamplers.0.conv", f"output_blocks.{m}.{at}.conv", "plain")
                )
            m += 1
    return rows


def _rename_unet_suffix(suffix: str, kind: str, to_original: bool) -> str:
    if kind != "resnet":
        return suffix  # attention internals and plain layers share names in both layouts
    module, _, param = suffix.rpartition(".")
    table = _UNET_RESNET if to_original else _UNET_RESNET_INV
    return f"{table.get(module, module)}.{param}"


def _apply_table(
    sd: Mapping[str, Tensor],
    rows: list[BlockRow],
    *,
    to_original: bool,
    rename: object,
    what: str,
) -> dict[str, Tensor]:
    src_of = (lambda r: r.diffusers) if to_original else (lambda r: r.original)
    dst_of = (lambda r: r.original) if to_original else (lambda r: r.diffusers)
    # Longest prefix first so "out.2" never captures "out.20..."-like siblings by accident.
    ordered = sorted(rows, key=lambda r: len(src_of(r)), reverse=True)
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in sd.items():
        for row in ordered:
            src = src_of(row)
            if key.startswith(src + "."):
                suffix = key[len(src) + 1 :]
                new_suffix, new_value = rename(suffix, value, row.kind, to_original)  # type: ignore[operator]
                out[f"{dst_of(row)}.{new_suffix}"] = new_value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"{what}: {len(unmapped)} key(s) do not fit the layout, e.g. {unmapped[:5]}; "
            "the file is not a standard SD UNet/VAE"
        )
    return out


def _unet_rename(suffix: str, value: Tensor, kind: str, to_original: bool) -> tuple[str, Tensor]:
    return _rename_unet_suffix(suffix, kind, to_original), value


def unet_diffusers_to_original(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers ``UNet2DConditionModel`` keys -> original keys (without ``model.diffusion_model.``)."""
    rows = unet_table_from_diffusers(sd.keys())
    return _apply_table(sd, rows, to_original=True, rename=_unet_rename, what="diffusers UNet")


def unet_original_to_diffusers(
    sd: Mapping[str, Tensor], *, label_emb_as: str = "add_embedding"
) -> dict[str, Tensor]:
    """Original UNet keys (without prefix) -> diffusers ``UNet2DConditionModel`` keys."""
    rows = unet_table_from_original(sd.keys(), label_emb_as=label_emb_as)
    return _apply_table(sd, rows, to_original=False, rename=_unet_rename, what="original UNet")


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------

# Mid-block attention: diffusers Attention (linear to_q/to_k/to_v/to_out.0, group_norm) <-> LDM
# AttnBlock (1x1 convs q/k/v/proj_out, norm). diffusers < 0.14 saved query/key/value/proj_attn.
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_ATTN_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_VAE_ATTN_INV = {v: k for k, v in _VAE_ATTN.items()}


def vae_table_from_original(keys: Iterable[str]) -> list[BlockRow]:
    ks = sorted(keys)
    rows = [
        BlockRow("encoder.conv_in", "encoder.conv_in", "plain"),
        BlockRow("encoder.conv_out", "encoder.conv_out", "plain"),
        BlockRow("encoder.conv_norm_out", "encoder.norm_out", "plain"),
        BlockRow("decoder.conv_in", "decoder.conv_in", "plain"),
        BlockRow("decoder.conv_out", "decoder.conv_out", "plain"),
        BlockRow("decoder.conv_norm_out", "decoder.norm_out", "plain"),
        BlockRow("quant_conv", "quant_conv", "plain"),
        BlockRow("post_quant_conv", "post_quant_conv", "plain"),
    ]
    for part in ("encoder", "decoder"):
        for b in (1, 2):
            rows.append(BlockRow(f"{part}.mid_block.resnets.{b - 1}", f"{part}.mid.block_{b}", "vae_resnet"))
        rows.append(BlockRow(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", "vae_attn"))
    downs = _indices(ks, r"encoder\.down\.(\d+)\.")
    for i in downs:
        for j in _indices(ks, rf"encoder\.down\.{i}\.block\.(\d+)\."):
            rows.append(
                BlockRow(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", "vae_resnet")
            )
        rows.append(
            BlockRow(
                f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", "plain"
            )
        )
    ups = _indices(ks, r"decoder\.up\.(\d+)\.")
    # LDM numbers decoder levels from the lowest resolution upwards in reverse: up.(L-1) runs first.
    for i in ups:
        d = len(ups) - 1 - i
        for j in _indices(ks, rf"decoder\.up\.{i}\.block\.(\d+)\."):
            rows.append(
                BlockRow(f"decoder.up_blocks.{d}.resnets.{j}", f"decoder.up.{i}.block.{j}", "vae_resnet")
            )
        rows.append(
            BlockRow(f"decoder.up_blocks.{d}.upsamplers.0.conv", f"decoder.up.{i}.upsample.conv", "plain")
        )
    return rows


def _vae_table_from_diffusers(keys: Iterable[str]) -> list[BlockRow]:
    ks = list(keys)
    downs = _indices(ks, r"encoder\.down_blocks\.(\d+)\.")
    ups = _indices(ks, r"decoder\.up_blocks\.(\d+)\.")
    fake = [
        f"encoder.down.{i}.block.{j}.x"
        for i in downs
        for j in _indices(ks, rf"encoder\.down_blocks\.{i}\.resnets\.(\d+)\.")
    ]
    fake += [
        f"decoder.up.{len(ups) - 1 - d}.block.{j}.x"
        for d in ups
        for j in _indices(ks, rf"decoder\.up_blocks\.{d}\.resnets\.(\d+)\.")
    ]
    return vae_table_from_original(fake)


def _vae_rename(suffix: str, value: Tensor, kind: str, to_original: bool) -> tuple[str, Tensor]:
    if kind == "vae_resnet":
        a, b = ("conv_shortcut", "nin_shortcut") if to_original else ("nin_shortcut", "conv_shortcut")
        return (b + suffix[len(a) :] if suffix.startswith(a + ".") else suffix), value
    if kind != "vae_attn":
        return suffix, value
    module, _, param = suffix.rpartition(".")
    if to_original:
        module = _VAE_ATTN_LEGACY.get(module, module)
        new = _VAE_ATTN.get(module, module)
        # The original AttnBlock uses 1x1 Conv2d layers: weights are (C, C, 1, 1).
        if param == "weight" and new != "norm" and value.ndim == 2:
            value = value[:, :, None, None]
    else:
        new = _VAE_ATTN_INV.get(module, module)
        if param == "weight" and module != "norm" and value.ndim == 4:
            value = value[:, :, 0, 0]
    return f"{new}.{param}", value


def vae_diffusers_to_original(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers ``AutoencoderKL`` keys -> original keys (no ``first_stage_model.``), attention as 1x1 convs."""
    rows = _vae_table_from_diffusers(sd.keys())
    return _apply_table(sd, rows, to_original=True, rename=_vae_rename, what="diffusers VAE")


def vae_original_to_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original VAE keys (no prefix) -> diffusers ``AutoencoderKL`` keys, attention as linear weights."""
    rows = vae_table_from_original(sd.keys())
    return _apply_table(sd, rows, to_original=False, rename=_vae_rename, what="original VAE")


def is_diffusers_vae(keys: Iterable[str]) -> bool:
    return any(".down_blocks." in k or ".mid_block." in k for k in keys)


def add_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def strip_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
