"""Which LoRA module names address which of our parameters.

A LoRA file names the *module* it patches (e.g. ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0
_attn1_to_q`` + ``.lora_up.weight``). The maps built here go from every spelling of a module name that
trainers use to our module path (the parameter key without ``.weight``/``.bias``):

UNet (our parameters follow the original LDM checkpoint keys, ``input_blocks.1.1.proj_in``):
  * kohya-ss sd-scripts: ``lora_unet_`` + the module path with ``.`` -> ``_``. SD1/SD2 LoRAs are trained on
    diffusers models (``down_blocks_0_attentions_0...``), SDXL ones usually on the SGM model
    (``input_blocks_4_1_transformer_blocks_0...``); both spellings are mapped.
  * diffusers / PEFT: ``unet.`` + the diffusers module path (also without prefix and with PEFT's
    ``base_model.model.``); the original path with ``diffusion_model.`` / ``model.diffusion_model.``.
  The diffusers <-> original correspondence comes from ``checkpoints.diffusers_layout``.

SD3/SD3.5 (MMDiT) and FLUX.1 transformers are mapped by ``keymap_flow``.

Text encoders (Hugging Face ``CLIPTextModel`` names below ``text_model.``):
  * kohya: ``lora_te_`` (single encoder), ``lora_te1_`` / ``lora_te2_`` (SDXL CLIP-L / OpenCLIP bigG);
  * diffusers: ``text_encoder.`` / ``text_encoder_2.``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from engine.diffusion.checkpoints.diffusers_layout import unet_original_to_diffusers

from .keymap_flow import flow_family, flow_key_map, flow_text_key_map

# Parameter leaves a LoRA can address (a module path is the key without one of these).
_LEAVES = (".weight", ".bias")


def _modules(param_keys: Iterable[str]) -> list[str]:
    out = []
    for k in param_keys:
        if k.endswith(".weight"):
            out.append(k[: -len(".weight")])
    return out


def _add(mapping: dict[str, str], name: str, target: str) -> None:
    mapping.setdefault(name, target)


def unet_key_map(param_keys: Iterable[str]) -> dict[str, str]:
    """LoRA module names -> our UNet module paths, for a UNet with these parameter keys."""
    all_keys = list(param_keys)
    keys = [k for k in all_keys if k.endswith(_LEAVES)]
    if flow_family(keys) is not None:
        # SD3 / FLUX.1 transformers: their own names (incl. Flux's norm scales), see keymap_flow
        return flow_key_map(all_keys)
    mapping: dict[str, str] = {}
    # Values pass through the layout conversion untouched, so converting {key: key} yields
    # {diffusers key: original key}.
    try:
        by_diffusers = cast(dict[str, str], unet_original_to_diffusers(cast(Any, {k: k for k in keys})))
    except ValueError:
        by_diffusers = {}  # not a standard LDM UNet layout: only the original spellings are mapped
    for orig in _modules(keys):
        _add(mapping, "lora_unet_" + orig.replace(".", "_"), orig)
        for prefix in ("diffusion_model.", "model.diffusion_model.", ""):
            _add(mapping, prefix + orig, orig)
    for dkey, okey in by_diffusers.items():
        if not dkey.endswith(".weight"):
            continue
        dmod, omod = dkey[: -len(".weight")], str(okey)[: -len(".weight")]
        _add(mapping, "lora_unet_" + dmod.replace(".", "_"), omod)
        for prefix in ("unet.", "base_model.model.", ""):
            _add(mapping, prefix + dmod, omod)
    return mapping


def _tower_aliases(towers: list[str]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Tower name -> (kohya prefixes, diffusers prefixes)."""
    if len(towers) == 1:
        only = towers[0]
        second = only == "clip_g"
        kohya = ("lora_te_", "lora_te1_") + (("lora_te2_",) if second else ())
        diff = ("text_encoder.",) + (("text_encoder_2.",) if second else ())
        return {only: (kohya, diff)}
    aliases: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for i, name in enumerate(towers):
        n = "" if i == 0 else f"_{i + 1}"
        aliases[name] = ((f"lora_te{i + 1}_",), (f"text_encoder{n}.",))
    return aliases


def text_encoder_key_map(param_keys: Iterable[str], *, prefix: str = "towers.") -> dict[str, str]:
    """LoRA module names -> module paths of an ``SDTextEncoder`` (``towers.<clip_x>.<HF CLIP names>``).

    Towers are numbered in the order their keys first appear (clip_l before clip_g for SDXL, as the
    encoder is built), which is the te1/te2 order of kohya and diffusers."""
    keys = list(param_keys)
    modules = [m for m in _modules(keys) if m.startswith(prefix)]
    if not modules:
        return flow_text_key_map(keys)  # SD3's / Flux's encoders ("clip_l.towers.clip_l...", T5)
    towers: list[str] = []
    for m in modules:
        t = m[len(prefix) :].split(".", 1)[0]
        if t not in towers:
            towers.append(t)
    aliases = _tower_aliases(towers)
    mapping: dict[str, str] = {}
    for m in modules:
        tower, _, rest = m[len(prefix) :].partition(".")
        # Towers are CLIPTextModel(WithProjection) (names under text_model.) or the bare
        # CLIPTextTransformer (names without it); LoRA files always use the CLIPTextModel spelling.
        if not rest.startswith(("text_model.", "text_projection")):
            rest = "text_model." + rest
        kohya, diff = aliases[tower]
        for p in kohya:
            _add(mapping, p + rest.replace(".", "_"), m)
        for p in diff:
            _add(mapping, p + rest, m)
    return mapping
