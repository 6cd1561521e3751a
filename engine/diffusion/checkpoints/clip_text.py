"""CLIP text towers as ``transformers`` models, built from checkpoint state dicts, and the one
conversion between the two key layouts (``openclip_to_hf`` / ``hf_to_openclip``).

Two key layouts occur in Stable Diffusion checkpoints:

- **HF layout** (OpenAI CLIP ViT-L as saved by ``transformers``): ``text_model.embeddings.token_embedding.weight``,
  ``text_model.encoder.layers.N.self_attn.{q,k,v,out}_proj.*``, ``...layer_norm{1,2}``, ``...mlp.fc{1,2}``,
  ``text_model.final_layer_norm.*`` (optionally ``text_projection.weight``). SD1 stores it under
  ``cond_stage_model.transformer.``, SDXL under ``conditioner.embedders.0.transformer.``.
- **OpenCLIP layout** (ViT-H for SD2 under ``cond_stage_model.model.``; ViT-bigG for SDXL under
  ``conditioner.embedders.1.model.``, for the SDXL refiner under ``conditioner.embedders.0.model.``):
  ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.N.attn.in_proj_{weight,bias}``
  (q, k, v stacked on dim 0, as ``torch.nn.MultiheadAttention`` stores them), ``...attn.out_proj.*``,
  ``...ln_1/ln_2``, ``...mlp.c_fc/c_proj``, ``ln_final.*``, ``text_projection`` (width x proj, applied as
  ``x @ text_projection``, hence transposed for HF's ``nn.Linear`` weight).

diffusers folders store the OpenCLIP towers in the HF layout (``CLIPTextModel(WithProjection)``), which
``hf_to_openclip`` maps back to the single-file layout. Functions here take state dicts *without* the
checkpoint prefix. Models are built on the ``meta`` device
and the checkpoint tensors are assigned (``load_state_dict(assign=True)``), so no random initialisation
happens and, when the tensors already have the target dtype, no copy is made either.

``transformers`` >= 5 flattened ``CLIPTextModel`` (its parameters lost the ``text_model.`` prefix), while
``CLIPTextModelWithProjection`` keeps it; the loaders adapt the canonical HF layout above to whatever the
installed version expects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

# All CLIP text towers used by Stable Diffusion use 64-dimensional attention heads (ViT-L/14: 768/12,
# ViT-H/14: 1024/16, ViT-bigG/14: 1280/20). The head count cannot be read from weight shapes.
CLIP_HEAD_DIM = 64

_HF_TOKEN = "text_model.embeddings.token_embedding.weight"
_HF_POSITION = "text_model.embeddings.position_embedding.weight"
_HF_POSITION_IDS = "text_model.embeddings.position_ids"
_HF_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")
_HF_PROJECTION = "text_projection.weight"

# OpenCLIP keys that are not part of the text tower we need.
_OPENCLIP_IGNORED = ("logit_scale", "attn_mask")
_OPENCLIP_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OPENCLIP_BLOCK_PARTS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_OPENCLIP_TOP = {
    "token_embedding.weight": _HF_TOKEN,
    "positional_embedding": _HF_POSITION,
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}


class TextEncoderWeightsError(ValueError):
    """A text-encoder state dict is missing keys or has shapes that do not form a CLIP text tower."""


def _require(sd: Mapping[str, Tensor], key: str, what: str) -> Tensor:
    if key not in sd:
        sample = ", ".join(sorted(sd)[:8])
        raise TextEncoderWeightsError(
            f"{what}: key '{key}' is missing (the state dict has {len(sd)} keys, e.g. {sample}); "
            "pass the text-encoder weights with the checkpoint prefix removed"
        )
    return sd[key]


def default_num_heads(width: int) -> int:
    """Head count for a CLIP text tower of this width (64-dim heads; one head below 64 for tiny models)."""
    heads = max(1, width // CLIP_HEAD_DIM)
    if width % heads:
        raise TextEncoderWeightsError(
            f"text encoder width {width} is not divisible into {CLIP_HEAD_DIM}-dim heads; pass num_heads"
        )
    return heads


def clip_text_config_from_state_dict(
    hf_sd: Mapping[str, Tensor],
    *,
    hidden_act: str = "quick_gelu",
    num_heads: int | None = None,
) -> CLIPTextConfig:
    """Infer a ``CLIPTextConfig`` from HF-layout weights.

    Read from shapes: width, vocabulary size, context length, layer count, MLP size, projection size (when
    ``text_projection.weight`` is present, else the width). Not in the shapes: the head count (see
    :func:`default_num_heads`) and the activation -- ``quick_gelu`` for OpenAI CLIP ViT-L (SD1, SDXL's first
    encoder), ``gelu`` for the OpenCLIP ViT-H/bigG towers.
    """
    from transformers import CLIPTextConfig

    what = "CLIP text encoder (HF layout)"
    vocab, width = _require(hf_sd, _HF_TOKEN, what).shape
    positions = _require(hf_sd, _HF_POSITION, what).shape[0]
    layer_ids = {int(m.group(1)) for k in hf_sd if (m := _HF_LAYER.match(k))}
    if not layer_ids:
        raise TextEncoderWeightsError(f"{what}: no 'text_model.encoder.layers.N.' keys found")
    layers = max(layer_ids) + 1
    if layer_ids != set(range(layers)):
        raise TextEncoderWeightsError(
            f"{what}: encoder layers are not contiguous: found {sorted(layer_ids)}, expected 0..{layers - 1}"
        )
    intermediate = _require(hf_sd, "text_model.encoder.layers.0.mlp.fc1.weight", what).shape[0]
    projection = hf_sd[_HF_PROJECTION].shape[0] if _HF_PROJECTION in hf_sd else width
    heads = num_heads if num_heads is not None else default_num_heads(int(width))
    return CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(width),
        intermediate_size=int(intermediate),
        projection_dim=int(projection),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=int(positions),
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        # With eos_token_id != 2 transformers pools at the first <|endoftext|>, as CLIP does.
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def openclip_to_hf(openclip_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an OpenCLIP text tower (prefix removed) to the HF layout.

    ``in_proj_weight``/``in_proj_bias`` are split into q, k, v (views, no copy); ``text_projection`` is
    transposed. Unknown keys raise, so a wrong prefix is reported instead of silently ignored.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in openclip_sd.items():
        if key in _OPENCLIP_IGNORED or key.startswith("visual."):
            continue
        if key in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[key]] = value
            continue
        if key == "text_projection":
            out[_HF_PROJECTION] = value.t()
            continue
        match = _OPENCLIP_RESBLOCK.match(key)
        if match is None:
            unknown.append(key)
            continue
        prefix = f"text_model.encoder.layers.{match.group(1)}."
        part = match.group(2)
        if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
            if value.shape[0] % 3:
                raise TextEncoderWeightsError(
                    f"OpenCLIP key '{key}' has shape {tuple(value.shape)}; dim 0 should stack q, k and v"
                )
            suffix = "weight" if part.endswith("weight") else "bias"
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}self_attn.{name}.{suffix}"] = chunk
        elif part in _OPENCLIP_BLOCK_PARTS:
            out[prefix + _OPENCLIP_BLOCK_PARTS[part]] = value
        else:
            unknown.append(key)
    if unknown:
        raise TextEncoderWeightsError(
            f"OpenCLIP text encoder: unrecognised keys {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}; expected the text tower with the checkpoint prefix "
            "(e.g. 'conditioner.embedders.1.model.') removed"
        )
    return out


# Per-layer renames OpenCLIP ResidualAttentionBlock -> HF CLIPEncoderLayer (module level, no param).
_HF_TO_OPENCLIP_LAYER = {
    hf.rsplit(".", 1)[0]: oc.rsplit(".", 1)[0] for oc, hf in _OPENCLIP_BLOCK_PARTS.items()
}
_HF_LAYER_PARAM = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_HF_TO_OPENCLIP_TOP = {hf: oc for oc, hf in _OPENCLIP_TOP.items()}


def hf_to_openclip(hf_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF ``CLIPTextModel``/``CLIPTextModelWithProjection`` keys -> OpenCLIP text-tower keys (the inverse
    of :func:`openclip_to_hf`, for diffusers folders).

    q, k and v projections are stacked (in that order) into ``attn.in_proj_weight``/``_bias``, as
    ``torch.nn.MultiheadAttention`` stores them; the projection ``Linear`` weight is transposed into
    OpenCLIP's ``text_projection`` matrix. Unknown keys raise.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in hf_sd.items():
        if key == _HF_POSITION_IDS:
            continue  # a buffer (arange), not a weight
        if key in _HF_TO_OPENCLIP_TOP:
            out[_HF_TO_OPENCLIP_TOP[key]] = value
        elif key == _HF_PROJECTION:
            out["text_projection"] = value.t().contiguous()
        elif (m := _HF_LAYER_PARAM.match(key)) is None:
            raise TextEncoderWeightsError(f"HF CLIP text model: unexpected key {key!r}")
        elif m.group(2) in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)[10]] = value
        elif m.group(2) in _HF_TO_OPENCLIP_LAYER:
            out[f"transformer.resblocks.{m.group(1)}.{_HF_TO_OPENCLIP_LAYER[m.group(2)]}.{m.group(3)}"] = (
                value
            )
        else:
            raise TextEncoderWeightsError(f"HF CLIP text model: unexpected key {key!r}")
    for (i, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise TextEncoderWeightsError(f"HF CLIP text model: layer {i} lacks some of q/k/v_proj.{param}")
        out[f"transformer.resblocks.{i}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], 0
        )
    return out


def _adapt_keys(model: torch.nn.Module, hf_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map canonical HF keys (``text_model.*``) onto the installed transformers' parameter names."""
    expected = set(model.state_dict().keys())
    adapted: dict[str, Tensor] = {}
    for key, value in hf_sd.items():
        if key == _HF_POSITION_IDS:
            continue  # a buffer, rebuilt below; some checkpoints carry corrupted float copies of it
        if key not in expected and key.startswith("text_model.") and key[len("text_model.") :] in expected:
            key = key[len("text_model.") :]
        adapted[key] = value
    return adapted


def _load_into_meta_model(
    model: torch.nn.Module,
    hf_sd: Mapping[str, Tensor],
    *,
    dtype: torch.dtype,
    device: torch.device | str | None,
    what: str,
) -> None:
    sd = _adapt_keys(model, hf_sd)
    expected = set(model.state_dict().keys())
    missing = sorted(expected - sd.keys())
    unexpected = sorted(sd.keys() - expected)
    if missing or unexpected:
        raise TextEncoderWeightsError(
            f"{what}: the weights do not match the inferred architecture; missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}"
        )
    # device=None keeps the tensors where they are (the caller loaded them there).
    target = torch.device(device) if device is not None else next(iter(sd.values())).device
    model_sd = model.state_dict()
    converted: dict[str, Tensor] = {}
    for key, value in sd.items():
        if tuple(value.shape) != tuple(model_sd[key].shape):
            raise TextEncoderWeightsError(
                f"{what}: '{key}' has shape {tuple(value.shape)}, expected {tuple(model_sd[key].shape)}"
            )
        # .to() is a no-op (shares storage) when dtype and device already match.
        converted[key] = value.to(device=target, dtype=dtype)
    model.load_state_dict(converted, strict=True, assign=True)
    # Non-persistent buffers stay on meta after assign=True: recreate them on the target device.
    for module in model.modules():
        if hasattr(module, "position_ids") and isinstance(module.position_ids, Tensor):
            count = module.position_ids.shape[-1]
            module.position_ids = torch.arange(count, device=target).expand((1, -1))
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise TextEncoderWeightsError(f"{what}: tensors left uninitialised after loading: {leftovers[:10]}")
    model.requires_grad_(False)
    model.eval()


def build_clip_text_model(
    hf_sd: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    hidden_act: str = "quick_gelu",
    num_heads: int | None = None,
) -> CLIPTextModel:
    """OpenAI CLIP ViT-L (or any HF-layout CLIP text tower) as ``transformers.CLIPTextModel``.

    A ``text_projection.weight`` in ``hf_sd`` is ignored (``CLIPTextModel`` has none; SD1/SDXL do not use it).
    ``dtype``/``device``: where the weights end up (``device=None`` keeps them where they are); tensors
    that already match are used as they are, without a copy. The same holds for the other builders.
    """
    from transformers import CLIPTextModel

    config = clip_text_config_from_state_dict(hf_sd, hidden_act=hidden_act, num_heads=num_heads)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = CLIPTextModel(config)
    weights = {k: v for k, v in hf_sd.items() if k != _HF_PROJECTION}
    _load_into_meta_model(model, weights, dtype=dtype, device=device, what="CLIP text encoder")
    return model


def build_clip_text_model_with_projection(
    hf_sd: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    hidden_act: str = "gelu",
    num_heads: int | None = None,
) -> CLIPTextModelWithProjection:
    """An HF-layout text tower with ``text_projection.weight`` as ``CLIPTextModelWithProjection``.

    When the projection is absent (some SD2 exports drop it: SD2 only uses hidden states), it is set to
    the identity so that the model is complete; the pooled output is then the unprojected EOS state.
    """
    from transformers import CLIPTextModelWithProjection

    config = clip_text_config_from_state_dict(hf_sd, hidden_act=hidden_act, num_heads=num_heads)
    config._attn_implementation = "sdpa"
    weights = dict(hf_sd)
    if _HF_PROJECTION not in weights:
        width = config.hidden_size
        weights[_HF_PROJECTION] = torch.eye(width, dtype=weights[_HF_TOKEN].dtype)
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    _load_into_meta_model(
        model, weights, dtype=dtype, device=device, what="CLIP text encoder with projection"
    )
    return model


def build_openclip_text_model(
    openclip_sd: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    num_heads: int | None = None,
) -> CLIPTextModelWithProjection:
    """OpenCLIP ViT-H (SD2) or ViT-bigG (SDXL) text tower, converted, as ``CLIPTextModelWithProjection``.

    OpenCLIP's text towers use exact GELU (``gelu``), unlike OpenAI CLIP's ``quick_gelu``.
    """
    return build_clip_text_model_with_projection(
        openclip_to_hf(openclip_sd), dtype=dtype, device=device, hidden_act="gelu", num_heads=num_heads
    )
