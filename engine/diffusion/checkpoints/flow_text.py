"""SD3 / FLUX.1 text encoders from weights: which encoder a file holds, T5's configuration from shapes, and
the SD3 / Flux encoder stacks built from per-kind state dicts.

Kinds and how a standalone file (``models/text_encoders``) is recognised, ComfyUI's rules (``comfy/sd.py``
``detect_te_model``) restated on shapes so that test-size files work too:

- ``t5xxl``: ``encoder.block.0.layer.0.SelfAttention.q.weight`` and ``shared.weight`` (T5 v1.1 encoder keys;
  a tied ``encoder.embed_tokens.weight`` is accepted);
- CLIP: ``text_model.embeddings.token_embedding.weight`` (Hugging Face layout, as ComfyUI saves
  ``clip_l.safetensors`` and ``clip_g.safetensors``). Width 768 is CLIP-L, 1280 CLIP-G; two towers of other
  (test) widths are told apart by width, the narrower being CLIP-L, as in the real pair; one tower of
  another width is taken as CLIP-L.

Key prefixes that single files and all-in-one checkpoints put before the model's keys are removed first.
fp8 (scaled) weights are dequantized into the requested dtype (``flow_loader.dequantize_fp8``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from engine.diffusion.text.flux_stack import FluxTextStack
from engine.diffusion.text.sd3_stack import SD3TextDims, SD3TextStack
from engine.diffusion.text.t5 import T5Config, T5EncoderModel

from .clip_text import build_clip_text_model_with_projection
from .diffusers_layout import strip_prefix
from .io import CheckpointError
from .loader import assign_weights

CLIP_TOKEN = "text_model.embeddings.token_embedding.weight"
T5_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"
# Prefixes found before the model keys of standalone text-encoder files and checkpoint sections.
_PREFIXES = (
    "text_encoders.clip_l.transformer.",
    "text_encoders.clip_g.transformer.",
    "text_encoders.t5xxl.transformer.",
    "cond_stage_model.transformer.",
    "transformer.",
)
CLIP_L_WIDTH, CLIP_G_WIDTH = 768, 1280


def strip_text_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` without the first known prefix all its model keys share (unchanged when none applies)."""
    for prefix in _PREFIXES:
        if any(k.startswith(prefix + "text_model.") or k.startswith(prefix + "encoder.block.") for k in sd):
            return strip_prefix(sd, prefix)
    return dict(sd)


def text_kind(sd: Mapping[str, torch.Tensor]) -> str | None:
    """ "t5xxl", "clip_l", "clip_g", "clip" (a CLIP tower of a non-standard width) or None."""
    if T5_MARKER in sd and ("shared.weight" in sd or "encoder.embed_tokens.weight" in sd):
        return "t5xxl"
    if CLIP_TOKEN in sd:
        width = sd[CLIP_TOKEN].shape[1]
        return {CLIP_L_WIDTH: "clip_l", CLIP_G_WIDTH: "clip_g"}.get(width, "clip")
    return None


def assign_clip_kinds(parts: list[tuple[str, dict[str, torch.Tensor]]]) -> list[tuple[str, dict[str, Any]]]:
    """Resolve "clip" (non-standard width) to clip_l / clip_g: by width among the CLIP towers given
    together (narrower = CLIP-L), a lone one is CLIP-L. ``parts``: (kind, state dict) per file."""
    clips = sorted((sd[CLIP_TOKEN].shape[1], i) for i, (kind, sd) in enumerate(parts) if kind == "clip")
    taken = {kind for kind, _ in parts if kind in ("clip_l", "clip_g")}
    free = [k for k in ("clip_l", "clip_g") if k not in taken]
    out = list(parts)
    for (_, i), kind in zip(clips, free, strict=False):
        out[i] = (kind, parts[i][1])
    return out


def t5_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> T5Config:
    """T5 v1.1 encoder configuration read from tensor shapes."""
    embed = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    if embed is None or T5_MARKER not in sd:
        raise ValueError("not a T5 encoder: 'shared.weight' or the first attention block is missing")
    vocab, d_model = embed.shape
    layers = 0
    while f"encoder.block.{layers}.layer.0.SelfAttention.q.weight" in sd:
        layers += 1
    bias = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    buckets, heads = bias.shape
    inner = sd[T5_MARKER].shape[0]
    d_ff = sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    return T5Config(
        vocab_size=int(vocab),
        d_model=int(d_model),
        d_kv=int(inner // heads),
        d_ff=int(d_ff),
        num_layers=layers,
        num_heads=int(heads),
        relative_attention_num_buckets=int(buckets),
    )


def build_t5(sd: Mapping[str, torch.Tensor], *, dtype: torch.dtype, path: str) -> T5EncoderModel:
    try:
        config = t5_config_from_state_dict(sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(path, f"cannot read the T5 configuration: {e}") from None
    weights = {k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}
    if "shared.weight" not in weights:
        weights["shared.weight"] = sd["encoder.embed_tokens.weight"]
    model = T5EncoderModel(config, dtype=dtype, device="meta")
    return assign_weights(model, weights, dtype=dtype, path=path, what="T5 encoder")  # type: ignore[return-value]


def build_clip(sd: Mapping[str, torch.Tensor], kind: str, *, dtype: torch.dtype, path: str) -> Any:
    """CLIP-L (quick GELU) or CLIP-G (GELU) as ``CLIPTextModelWithProjection`` (identity projection when
    the file has none: SD3 and Flux use CLIP-L's pooled state unprojected)."""
    try:
        return build_clip_text_model_with_projection(
            sd, dtype=dtype, hidden_act="quick_gelu" if kind == "clip_l" else "gelu"
        )
    except ValueError as e:
        raise CheckpointError(path, f"text encoder {kind}: {e}") from None


def build_towers(
    parts: Mapping[str, Mapping[str, torch.Tensor]], *, dtype: torch.dtype, path: str
) -> dict[str, Any]:
    """kind -> model for each of ``parts`` (clip_l, clip_g, t5xxl state dicts, prefixes removed)."""
    out: dict[str, Any] = {}
    for kind, sd in parts.items():
        out[kind] = (
            build_t5(sd, dtype=dtype, path=path)
            if kind == "t5xxl"
            else build_clip(sd, kind, dtype=dtype, path=path)
        )
    return out


def sd3_dims(towers: Mapping[str, Any]) -> SD3TextDims:
    """The SD3 stack's feature sizes from the towers present (SD3's real sizes for the missing ones)."""
    dims = SD3TextDims()
    l_tower, g_tower, t5 = towers.get("clip_l"), towers.get("clip_g"), towers.get("t5xxl")
    return SD3TextDims(
        clip_l=l_tower.config.hidden_size if l_tower is not None else dims.clip_l,
        clip_g=g_tower.config.hidden_size if g_tower is not None else dims.clip_g,
        clip_g_pooled=g_tower.config.projection_dim if g_tower is not None else dims.clip_g_pooled,
        context=t5.config.d_model if t5 is not None else dims.context,
    )


def build_sd3_stack(towers: Mapping[str, Any], *, t5_tokenizer: Any) -> SD3TextStack:
    return SD3TextStack(
        towers.get("clip_l"),
        towers.get("clip_g"),
        towers.get("t5xxl"),
        t5_tokenizer=t5_tokenizer if "t5xxl" in towers else None,
        dims=sd3_dims(towers),
    )


def build_flux_stack(towers: Mapping[str, Any], *, t5_tokenizer: Any, path: str) -> FluxTextStack:
    missing = [k for k in ("clip_l", "t5xxl") if k not in towers]
    if missing:
        raise CheckpointError(
            path,
            f"FLUX.1 needs CLIP-L and T5-XXL text encoders; missing: {', '.join(missing)} "
            "(load clip_l.safetensors and a t5xxl file with DualCLIPLoader, type flux)",
        )
    return FluxTextStack(towers["clip_l"], towers["t5xxl"], t5_tokenizer=t5_tokenizer)
