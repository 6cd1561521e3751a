"""Read a LoRA-family file into weight patches keyed by our parameter names.

Supported layouts (per module name ``M``, see ``keymap`` for the names):

* LoRA, kohya-ss: ``M.lora_up.weight``, ``M.lora_down.weight``, optional ``M.lora_mid.weight`` (LoCon
  Tucker core) and ``M.alpha``; diffusers: ``M.lora.up.weight`` / ``M.lora.down.weight``,
  ``M.lora_linear_layer.up/down.weight``; PEFT: ``M.lora_A.weight`` (down) / ``M.lora_B.weight`` (up).
  ``delta = up @ down * alpha / rank`` (``rank = down.shape[0]``; no alpha -> scale 1, as PEFT files
  carry their scale in the adapter config, which ComfyUI ignores as well).
* LyCORIS LoHa: ``M.hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (+ ``hada_t1``/``hada_t2``).
* LyCORIS LoKr: ``M.lokr_w1`` or ``lokr_w1_a``/``lokr_w1_b``; ``M.lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``
  (+ ``lokr_t2``).
* Full differences: ``M.diff`` (weight) and ``M.diff_b`` (bias); a LoRA's ``lora_B.bias`` / ``lora_up.bias``
  counts as ``diff_b`` and XLabs' Flux names are renamed first (``keymap_flow.convert_flow_lora_keys``).
* ComfyUI's ``M.set_weight`` (the value replaces the parameter) and ``M.reshape_weight`` (M's weight is
  zero-padded to that shape before its LoRA is added), which BFL's Flux control LoRAs use.

Keys that address no known module, and parts of formats that are not implemented (DoRA's
``dora_scale``, LyCORIS norm ``w_norm``/``b_norm``), are returned in ``LoraLoad.unmatched`` (ComfyUI's
"lora key not loaded") so callers can show them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from engine.diffusion.checkpoints.io import read_state_dict
from engine.memory.weight_patches import (
    DiffPatch,
    GrowPatch,
    LoHaPatch,
    LoKrPatch,
    LoRAPatch,
    SetPatch,
    WeightPatch,
)

from .keymap_flow import SlicedModule, SlicedPatch, SumPatch, convert_flow_lora_keys

# (up suffix, down suffix, mid suffix or None) for every plain-LoRA spelling.
_LORA_SUFFIXES = (
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight"),
    (".lora.up.weight", ".lora.down.weight", None),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None),
    (".lora_B.weight", ".lora_A.weight", None),
    (".lora_B.default.weight", ".lora_A.default.weight", None),
)
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
_LOKR = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


@dataclass
class LoraLoad:
    """Patches per target (e.g. "unet", "clip"), keyed by parameter key, and the keys nothing used."""

    patches: dict[str, dict[str, WeightPatch]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)

    def count(self, target: str) -> int:
        return len(self.patches.get(target, {}))

    def summary(self) -> str:
        parts = [f"{t}: {len(p)} weights patched" for t, p in self.patches.items()]
        if self.unmatched:
            shown = ", ".join(self.unmatched[:8])
            more = f" (+{len(self.unmatched) - 8} more)" if len(self.unmatched) > 8 else ""
            parts.append(f"{len(self.unmatched)} lora key(s) not loaded: {shown}{more}")
        return "; ".join(parts) if parts else "nothing to patch"


def _normalise_module(name: str) -> str:
    """Old diffusers attention-processor LoRAs name ``attn1.processor.to_q_lora`` for ``attn1.to_q``."""
    if ".processor." in name:
        name = name.replace(".processor.", ".")
        for proj in ("to_q", "to_k", "to_v"):
            name = name.replace(f".{proj}_lora", f".{proj}")
        name = name.replace(".to_out_lora", ".to_out.0")
    return name


def _alpha(sd: Mapping[str, torch.Tensor], module: str, used: set[str]) -> float | None:
    key = f"{module}.alpha"
    if key in sd:
        used.add(key)
        return float(sd[key].float().item())
    return None


def _resolve(name: str, targets: Mapping[str, Mapping[str, str]]) -> tuple[str, str] | None:
    norm = _normalise_module(name)
    for target, mapping in targets.items():
        if norm in mapping:
            return target, mapping[norm]
    return None


def load_lora(sd: Mapping[str, torch.Tensor], targets: Mapping[str, Mapping[str, str]]) -> LoraLoad:
    """Turn a LoRA state dict into patches.

    ``targets``: target name -> module-name map (from ``unet_key_map`` / ``text_encoder_key_map``).
    Returns patches keyed by ``<module>.weight`` / ``<module>.bias`` per target."""
    result = LoraLoad(patches={t: {} for t in targets})
    sd = convert_flow_lora_keys(sd)
    used: set[str] = set()

    def put(name: str, leaf: str, patch: WeightPatch, keys: list[str]) -> None:
        hit = _resolve(name, targets)
        if hit is None:
            return
        target, module = hit
        key = f"{module}.{leaf}"
        if isinstance(module, SlicedModule):
            patch = SlicedPatch(patch, module.part, module.swap_halves)
        if key in result.patches[target]:
            # diffusers' q, k and v LoRAs of one fused qkv weight land on the same key
            before = result.patches[target][key]
            parts = before.parts if isinstance(before, SumPatch) else (before,)
            patch = SumPatch((*parts, patch))
        result.patches[target][key] = patch
        used.update(keys)
        _alpha(sd, name, used)

    for key in sd:
        for up_s, down_s, mid_s in _LORA_SUFFIXES:
            if key.endswith(up_s):
                name = key[: -len(up_s)]
                down_k = name + down_s
                if down_k not in sd:
                    break
                mid_k = name + mid_s if mid_s else None
                mid = sd[mid_k] if mid_k and mid_k in sd else None
                alpha = _alpha(sd, name, set())
                keys = [key, down_k] + ([mid_k] if mid is not None and mid_k else [])
                put(name, "weight", LoRAPatch(sd[key], sd[down_k], alpha, mid), keys)
                break
        if key.endswith(".hada_w1_a"):
            name = key[: -len(".hada_w1_a")]
            parts = {p: sd.get(f"{name}.{p}") for p in _LOHA}
            if all(parts[p] is not None for p in _LOHA[:4]):
                patch = LoHaPatch(
                    parts["hada_w1_a"], parts["hada_w1_b"], parts["hada_w2_a"], parts["hada_w2_b"],  # type: ignore[arg-type]
                    _alpha(sd, name, set()), parts["hada_t1"], parts["hada_t2"],
                )  # fmt: skip
                put(name, "weight", patch, [f"{name}.{p}" for p in _LOHA if parts[p] is not None])
        for first in (".lokr_w1", ".lokr_w1_a"):
            if key.endswith(first):
                name = key[: -len(first)]
                parts = {p: sd.get(f"{name}.{p}") for p in _LOKR}
                try:
                    lokr = LoKrPatch(
                        w1=parts["lokr_w1"], w2=parts["lokr_w2"], w1_a=parts["lokr_w1_a"],
                        w1_b=parts["lokr_w1_b"], w2_a=parts["lokr_w2_a"], w2_b=parts["lokr_w2_b"],
                        t2=parts["lokr_t2"], alpha=_alpha(sd, name, set()),
                    )  # fmt: skip
                except ValueError:
                    continue  # incomplete: its keys end up in `unmatched`
                put(name, "weight", lokr, [f"{name}.{p}" for p in _LOKR if parts[p] is not None])
        if key.endswith(".diff"):
            put(key[: -len(".diff")], "weight", DiffPatch(sd[key]), [key])
        elif key.endswith(".diff_b"):
            put(key[: -len(".diff_b")], "bias", DiffPatch(sd[key]), [key])
        elif key.endswith(".set_weight"):
            name = key[: -len(".set_weight")]  # a module (its weight) or a full parameter path
            module, _, leaf = name.rpartition(".")
            if _resolve(name, targets) is not None:
                module, leaf = name, "weight"
            put(module, leaf, SetPatch(sd[key]), [key])
    for key in [k for k in sd if k.endswith(".reshape_weight")]:
        _grow(result, sd, key, targets, used)
    result.unmatched = sorted(k for k in sd if k not in used)
    return result


def _grow(
    result: LoraLoad,
    sd: Mapping[str, torch.Tensor],
    key: str,
    targets: Mapping[str, Mapping[str, str]],
    used: set[str],
) -> None:
    """``M.reshape_weight`` (BFL control LoRAs): M's weight is zero-padded to that shape before its patch."""
    hit = _resolve(key[: -len(".reshape_weight")], targets)
    if hit is None:
        return
    target, module = hit
    patch = result.patches[target].get(f"{module}.weight")
    if patch is not None:
        shape = tuple(int(n) for n in sd[key].reshape(-1).tolist())
        result.patches[target][f"{module}.weight"] = GrowPatch(patch, shape)
        used.add(key)


def load_lora_file(path: str | os.PathLike[str], targets: Mapping[str, Mapping[str, str]]) -> LoraLoad:
    """``load_lora`` on a ``.safetensors`` (or weights-only ``.pt``/``.ckpt``) file, read in float32."""
    return load_lora(read_state_dict(path, dtype=torch.float32), targets)
