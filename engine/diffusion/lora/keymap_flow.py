"""LoRA module names for the flow transformers: SD3/SD3.5 (MMDiT, MMDiT-X) and FLUX.1.

Our parameters are the original checkpoint keys (``joint_blocks.0.x_block.attn.qkv``,
``double_blocks.0.img_attn.qkv``, ``single_blocks.0.linear1``) under the handle's module prefix
(``model.``). Trainers name them in three ways (facts from ComfyUI's ``comfy/lora.py`` and the
``mmdit_to_diffusers`` / ``flux_to_diffusers`` maps of ``comfy/utils.py``):

* native / ComfyUI: the original path after ``diffusion_model.``, ``model.diffusion_model.``,
  ``transformer.`` or nothing; kohya-ss: ``lora_unet_`` + the path with ``.`` -> ``_``;
* diffusers / PEFT: ``transformer.`` (or ``base_model.model.``) + the diffusers module path, OneTrainer
  ``lora_transformer_`` and SimpleTuner LyCORIS ``lycoris_`` + that path with ``.`` -> ``_``.

Diffusers splits what the original fuses: ``attn.to_q``/``to_k``/``to_v`` are equal row blocks of one
``qkv`` weight (and of Flux's single-block ``linear1``, whose remaining rows are ``proj_mlp``), and the
final ``norm_out.linear`` (plus SD3's last context-block modulation) keeps scale before shift where the
original keeps shift before scale. Such names map to a `SlicedModule`, which says where the LoRA's
rows go; the loader turns it into a `SlicedPatch`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from engine.diffusion.checkpoints.flow_diffusers import (
    FLUX_BASIC,
    FLUX_DOUBLE,
    FLUX_SINGLE,
    SD3_BASIC,
    SD3_BLOCK,
)
from engine.memory.weight_patches import WeightPatch


class SlicedModule(str):
    """A module path (the ``str`` value, so key maps stay ``dict[str, str]`` for their other users) whose
    LoRA covers only some rows of the weight: block ``part`` of equal-sized blocks counted from the first
    row, or (``part = -1``) the last rows; ``swap_halves`` for diffusers' scale/shift order."""

    part: int
    swap_halves: bool

    def __new__(cls, module: str, part: int = 0, swap_halves: bool = False) -> SlicedModule:
        obj = super().__new__(cls, module)
        obj.part = part
        obj.swap_halves = swap_halves
        return obj


@dataclass(frozen=True)
class SlicedPatch:
    """``inner``'s delta placed on its rows of the full weight (zeros elsewhere). The row count comes
    from the delta itself (a q/k/v LoRA has ``hidden`` rows), so no model config is needed."""

    inner: WeightPatch
    part: int = 0
    swap_halves: bool = False

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        piece = self.inner.delta(weight)
        n = piece.numel() // max(1, weight[0].numel())
        piece = piece.reshape(n, *weight.shape[1:])
        if self.swap_halves:
            piece = torch.cat([piece[n // 2 :], piece[: n // 2]])
        start = weight.shape[0] - n if self.part < 0 else self.part * n
        if start < 0 or start + n > weight.shape[0]:
            raise ValueError(f"a LoRA block of {n} rows does not fit at row {start} of {tuple(weight.shape)}")
        out = torch.zeros_like(weight, dtype=torch.float32)
        out[start : start + n] = piece
        return out


@dataclass(frozen=True)
class SumPatch:
    """Several patches on one weight (the q, k and v LoRAs of one fused qkv)."""

    parts: tuple[WeightPatch, ...]

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for p in self.parts:
            total += p.delta(weight).reshape(weight.shape)
        return total


_QKV = (("to_q", 0), ("to_k", 1), ("to_v", 2))
_ADD_QKV = (("add_q_proj", 0), ("add_k_proj", 1), ("add_v_proj", 2))


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {theirs: ours for ours, theirs in table.items()}


# diffusers module -> ours: the diffusers-folder conversion's tables read the other way round.
_FLUX_DOUBLE = _inverse(FLUX_DOUBLE)
_FLUX_SINGLE = _inverse(FLUX_SINGLE)
_FLUX_BASIC = _inverse(FLUX_BASIC)
_MMDIT_BLOCK = _inverse(SD3_BLOCK)
_MMDIT_BASIC = _inverse(SD3_BASIC)

# XLabs' Flux LoRAs (attention-processor names, facts from ComfyUI's ``lora_convert.convert_uso_lora``): image
# stream 1, text stream 2; ``qkv_lora`` of a single block covers the q/k/v rows of ``linear1`` only.
_XLABS = (
    (".processor.qkv_lora1.", ".img_attn.qkv."),
    (".processor.qkv_lora2.", ".txt_attn.qkv."),
    (".processor.proj_lora1.", ".img_attn.proj."),
    (".processor.proj_lora2.", ".txt_attn.proj."),
    (".processor.qkv_lora.", ".linear1_qkv."),
    (".processor.proj_lora.", ".linear2."),
)
_XLABS_LEAVES = ((".down.weight", ".lora_down.weight"), (".up.weight", ".lora_up.weight"))
# A LoRA's up-projection bias (BFL's control LoRAs, PEFT ``lora_bias``): ComfyUI adds it to the layer's
# bias as a plain difference (``diff_b``), not scaled by alpha / rank.
_UP_BIASES = (".lora_B.bias", ".lora_up.bias", ".lora.up.bias")


def is_bfl_control_lora(sd: Mapping[str, torch.Tensor]) -> bool:
    """BFL's FLUX.1 Canny / Depth LoRAs (``flux1-depth-dev-lora``): a LoRA on an ``img_in`` with more input
    channels (the control latent's), plus whole QK-norm scales (ComfyUI's ``convert_lora_bfl_control``)."""
    return "img_in.lora_A.weight" in sd and "single_blocks.0.norm.key_norm.scale" in sd


def _bfl_control(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The norm scales become ``set_weight`` entries and ``img_in`` gets a ``reshape_weight``: the shape its
    weight is zero-padded to before the LoRA is added (lora_B's rows x lora_A's columns)."""
    out = {(k + ".set_weight" if k.endswith("_norm.scale") else k): v for k, v in sd.items()}
    up, down = sd["img_in.lora_B.weight"], sd["img_in.lora_A.weight"]
    out["img_in.reshape_weight"] = torch.tensor([up.shape[0], down.shape[1]])
    return out


def convert_flow_lora_keys(sd: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """XLabs names -> the native ``lora_up`` / ``lora_down`` names, up-projection biases -> ``diff_b``, BFL
    control LoRAs' extras (``_bfl_control``); any other state dict is returned unchanged (the same object)."""
    if is_bfl_control_lora(sd):
        sd = _bfl_control(sd)
    if not any(k.endswith(_UP_BIASES) or (".processor." in k and "_lora" in k) for k in sd):
        return sd
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        for old, ours in _XLABS:
            if old in new:
                new = new.replace(old, ours)
                for leaf, native in _XLABS_LEAVES:
                    if new.endswith(leaf):
                        new = new[: -len(leaf)] + native
        for bias in _UP_BIASES:
            if new.endswith(bias):
                new = new[: -len(bias)] + ".diff_b"
        out[new] = value
    return out


_FAMILY_MARK = re.compile(r"^(.*?)(double_blocks|joint_blocks)\.\d+\.")


def flow_family(param_keys: Iterable[str]) -> tuple[str, str] | None:
    """("flux" | "mmdit", module prefix) when these keys are a flow transformer's, else None."""
    for k in param_keys:
        m = _FAMILY_MARK.match(k)
        if m:
            return ("flux" if m.group(2) == "double_blocks" else "mmdit"), m.group(1)
    return None


def _block_count(modules: set[str], name: str) -> int:
    ids = {int(m.split(".")[1]) for m in modules if m.startswith(name + ".")}
    return max(ids) + 1 if ids else 0


def _flux_diffusers(modules: set[str]) -> dict[str, str]:
    out: dict[str, str] = dict(_FLUX_BASIC)
    out["norm_out.linear"] = SlicedModule("final_layer.adaLN_modulation.1", 0, swap_halves=True)
    for i in range(_block_count(modules, "double_blocks")):
        src, dst = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for name, part in _QKV:
            out[f"{src}.attn.{name}"] = SlicedModule(f"{dst}.img_attn.qkv", part)
        for name, part in _ADD_QKV:
            out[f"{src}.attn.{name}"] = SlicedModule(f"{dst}.txt_attn.qkv", part)
        out.update({f"{src}.{d}": f"{dst}.{o}" for d, o in _FLUX_DOUBLE.items()})
    for i in range(_block_count(modules, "single_blocks")):
        src, dst = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for name, part in _QKV:
            out[f"{src}.attn.{name}"] = SlicedModule(f"{dst}.linear1", part)
        out[f"{src}.proj_mlp"] = SlicedModule(f"{dst}.linear1", -1)
        out.update({f"{src}.{d}": f"{dst}.{o}" for d, o in _FLUX_SINGLE.items()})
    return out


def _mmdit_diffusers(modules: set[str]) -> dict[str, str]:
    out: dict[str, str] = dict(_MMDIT_BASIC)
    out["norm_out.linear"] = SlicedModule("final_layer.adaLN_modulation.1", 0, swap_halves=True)
    depth = _block_count(modules, "joint_blocks")
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        for name, part in _QKV:
            out[f"{src}.attn.{name}"] = SlicedModule(f"{dst}.x_block.attn.qkv", part)
            out[f"{src}.attn2.{name}"] = SlicedModule(f"{dst}.x_block.attn2.qkv", part)
        for name, part in _ADD_QKV:
            out[f"{src}.attn.{name}"] = SlicedModule(f"{dst}.context_block.attn.qkv", part)
        out.update({f"{src}.{d}": f"{dst}.{o}" for d, o in _MMDIT_BLOCK.items()})
    if depth:
        # diffusers' last block is "context_pre_only": its context modulation has scale before shift.
        last = f"joint_blocks.{depth - 1}.context_block.adaLN_modulation.1"
        out[f"transformer_blocks.{depth - 1}.norm1_context.linear"] = SlicedModule(last, 0, swap_halves=True)
    return out


def _with_prefix(module: str, prefix: str) -> str:
    if isinstance(module, SlicedModule):
        return SlicedModule(prefix + module, module.part, module.swap_halves)
    return prefix + module


def flow_key_map(param_keys: Iterable[str]) -> dict[str, str]:
    """LoRA module names -> our module paths for an MMDiT or Flux module with these parameter keys
    (empty when the keys are neither)."""
    all_keys = list(param_keys)
    keys = [k for k in all_keys if k.endswith(".weight")]
    found = flow_family(keys)
    if found is None:
        return {}
    family, prefix = found
    ours = {k[len(prefix) : -len(".weight")] for k in keys if k.startswith(prefix)}
    # Flux's QK-norm scales (the modules BFL's control LoRAs set) answer to their native names too.
    ours |= {
        k[len(prefix) : -len(".scale")]
        for k in all_keys
        if k.startswith(prefix) and k.endswith("_norm.scale")
    }
    mapping: dict[str, str] = {}
    for m in sorted(ours):
        target = prefix + m
        for p in ("diffusion_model.", "model.diffusion_model.", "transformer.", ""):
            mapping.setdefault(p + m, target)
        for p in ("lora_unet_", "lora_transformer_"):
            mapping.setdefault(p + m.replace(".", "_"), target)
    for m in sorted(ours):
        if m.startswith("single_blocks.") and m.endswith(".linear1"):  # XLabs' q/k/v part of linear1
            for p in ("diffusion_model.", ""):
                mapping.setdefault(f"{p}{m}_qkv", SlicedModule(prefix + m, 0))
    diffusers = _flux_diffusers(ours) if family == "flux" else _mmdit_diffusers(ours)
    for dname, module in diffusers.items():
        if str(module) not in ours:
            continue  # e.g. attn2 on blocks without dual attention, the last block's context MLP
        target = _with_prefix(module, prefix)
        flat = dname.replace(".", "_")
        for name in (f"transformer.{dname}", f"base_model.model.{dname}", dname):
            mapping.setdefault(name, target)
        for name in (f"lora_transformer_{flat}", f"lycoris_{flat}"):
            mapping.setdefault(name, target)
    return mapping


# SD3's / Flux's text encoders as the flow CLIP handle holds them: "<kind>.towers.<kind>.<CLIPTextModel
# names>" for CLIP-L/G and "t5xxl.t5xxl.<T5EncoderModel names>".
_FLOW_TEXT = re.compile(r"^(clip_l|clip_g)\.towers\.\1\.|^(t5xxl)\.t5xxl\.")


def flow_text_key_map(param_keys: Iterable[str]) -> dict[str, str]:
    """LoRA module names -> module paths of SD3's triple / Flux's dual text encoder.

    Numbering as ComfyUI's ``model_lora_keys_clip``: CLIP-L is te1, CLIP-G te2 (te1 when alone), T5
    comes after the CLIPs (OneTrainer: te3 for SD3; for Flux both te2 and te3 are seen). Diffusers
    pipelines number ``text_encoder``, ``text_encoder_2``, ``text_encoder_3`` the same way."""
    found: dict[str, list[tuple[str, str]]] = {}
    for k in param_keys:
        m = _FLOW_TEXT.match(k)
        if m and k.endswith(".weight"):
            kind = m.group(1) or m.group(2)
            found.setdefault(kind, []).append((k[: -len(".weight")], k[m.end() : -len(".weight")]))
    clips = [c for c in ("clip_l", "clip_g") if c in found]
    numbers: dict[str, list[int]] = {c: [i + 1] for i, c in enumerate(clips)}
    if "t5xxl" in found:
        numbers["t5xxl"] = [len(clips) + 1] + ([3] if len(clips) == 1 else [])
    mapping: dict[str, str] = {}
    for kind, modules in found.items():
        for module, rest in modules:
            names = [f"text_encoders.{kind}.transformer.{rest}"]  # ComfyUI's generic spelling
            for n in numbers[kind]:
                names += [
                    f"lora_te{n}_{rest.replace('.', '_')}",
                    f"text_encoder{'' if n == 1 else f'_{n}'}.{rest}",
                ]
            if clips and kind == clips[0]:  # the first CLIP also answers to the single-encoder name
                names.append(f"lora_te_{rest.replace('.', '_')}")
            for name in names:
                mapping.setdefault(name, module)
    return mapping
