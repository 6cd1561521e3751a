"""Vision towers from state dicts: the two key layouts, the config read from shapes, the module.

Layouts (ComfyUI's ``comfy.clip_vision.load`` accepts both):

- **HF** (``CLIPVisionModelWithProjection`` / ``SiglipVisionModel`` files, what ``models/clip_vision`` usually
  holds): the parameter names of ``clip_vision.ClipVisionModel``.
- **OpenCLIP / OpenAI** visual towers, under ``visual.`` in full CLIP files and ``embedder.model.visual.`` in
  SD2.1 unCLIP checkpoints: ``class_embedding``, ``conv1.weight``, ``positional_embedding``, ``ln_pre``,
  ``transformer.resblocks.N.*`` (q, k, v stacked in ``attn.in_proj_*``), ``ln_post``, ``proj`` (width x
  projection, applied as ``x @ proj``). :func:`openclip_visual_to_hf` renames them to the HF layout.

Read from shapes: width, layers, MLP size, patch size, image size (from the position table), projection
size, CLIP vs SigLIP (no class token, biased patch convolution). Not in the shapes: the head count and the
activation (see ``clip_vision.default_heads`` / :func:`default_activation`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from engine.diffusion.checkpoints.clip_text import openclip_to_hf

from .clip_vision import SIGLIP_MEAN, SIGLIP_STD, ClipVisionModel, VisionConfig, default_heads, image_size_for

UNCLIP_VISUAL_PREFIX = "embedder.model.visual."
OPENCLIP_VISUAL_PREFIX = "visual."
_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
_KEEP = ("vision_model.", "visual_projection.", "multi_modal_projector.")
# OpenCLIP visual tower key -> HF key, for the keys outside the residual blocks (and `proj`).
OPENCLIP_VISUAL_KEYS = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}


class VisionWeightsError(ValueError):
    """A state dict that is not a vision tower this loader knows (the message says what is missing)."""


def has_openclip_visual(sd: Mapping[str, Tensor], prefix: str) -> bool:
    return f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in sd


def openclip_visual_to_hf(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The visual tower under ``prefix`` renamed to the HF layout (other keys are left out)."""
    body = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    out = {OPENCLIP_VISUAL_KEYS[k]: v for k, v in body.items() if k in OPENCLIP_VISUAL_KEYS}
    if "proj" in body:
        out["visual_projection.weight"] = body["proj"].t()
    # The residual blocks are laid out as in the OpenCLIP text tower: reuse its conversion.
    blocks = openclip_to_hf({k: v for k, v in body.items() if k.startswith("transformer.resblocks.")})
    out.update({"vision_model." + k[len("text_model.") :]: v for k, v in blocks.items()})
    return out


def to_hf_layout(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Any accepted layout -> HF vision keys only (text towers, logit scale, position ids dropped)."""
    for prefix in (OPENCLIP_VISUAL_PREFIX, UNCLIP_VISUAL_PREFIX, ""):
        if has_openclip_visual(sd, prefix):
            return openclip_visual_to_hf(sd, prefix)
    return {k: v for k, v in sd.items() if k.startswith(_KEEP) and not k.endswith("embeddings.position_ids")}


def default_activation(width: int, kind: str) -> str:
    """SigLIP: tanh-approximated GELU; OpenAI's ViT-L (and ViT-B): quick GELU; OpenCLIP's H and bigG: GELU
    (ComfyUI's configs). A tiny tower cannot say which, so it gets GELU."""
    if kind == "siglip":
        return "gelu_pytorch_tanh"
    return "quick_gelu" if width in (768, 1024) else "gelu"


def _need(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        sample = ", ".join(sorted(sd)[:6]) or "(none)"
        raise VisionWeightsError(
            f"not a CLIP vision model: key {key!r} is missing (vision keys found: {sample}); expected the "
            "Hugging Face layout ('vision_model.*') or an OpenCLIP visual tower ('visual.transformer.*')"
        )
    return sd[key]


def vision_config_from_state_dict(
    sd: Mapping[str, Tensor], *, num_heads: int | None = None, activation: str | None = None
) -> VisionConfig:
    """The config of HF-layout vision weights (see the module docstring for what shapes cannot show)."""
    patch = _need(sd, "vision_model.embeddings.patch_embedding.weight")
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    kind = "clip" if "vision_model.embeddings.class_embedding" in sd else "siglip"
    positions = int(_need(sd, "vision_model.embeddings.position_embedding.weight").shape[0])
    layer_ids = {int(m.group(1)) for k in sd if (m := _LAYER.match(k))}
    if not layer_ids or layer_ids != set(range(max(layer_ids) + 1)):
        raise VisionWeightsError(f"vision encoder layers are missing or not contiguous: {sorted(layer_ids)}")
    inner = int(_need(sd, "vision_model.encoder.layers.0.mlp.fc1.weight").shape[0])
    proj = sd.get("visual_projection.weight")
    extra = {"mean": SIGLIP_MEAN, "std": SIGLIP_STD} if kind == "siglip" else {}
    try:
        image_size = image_size_for(positions, patch_size, class_token=kind == "clip")
    except ValueError as e:
        raise VisionWeightsError(str(e)) from None
    return VisionConfig(
        hidden_size=width,
        num_layers=len(layer_ids),
        num_heads=num_heads or default_heads(width),
        intermediate_size=inner,
        patch_size=patch_size,
        image_size=image_size,
        activation=activation or default_activation(width, kind),
        kind=kind,
        projection_dim=int(proj.shape[0]) if proj is not None else None,
        llava_projector="multi_modal_projector.linear_1.weight" in sd,
        **extra,  # type: ignore[arg-type]
    )


def build_clip_vision(
    sd: Mapping[str, Tensor],
    *,
    dtype: torch.dtype | None = None,
    num_heads: int | None = None,
    activation: str | None = None,
) -> ClipVisionModel:
    """A vision tower from a state dict in either layout; the tensors are assigned (no random init)."""
    hf = to_hf_layout(sd)
    config = vision_config_from_state_dict(hf, num_heads=num_heads, activation=activation)
    model = ClipVisionModel(config, device="meta")
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(hf))
    if missing:
        raise VisionWeightsError(f"CLIP vision weights are incomplete: missing {missing[:6]}")
    weights = {}
    for key, ref in wanted.items():
        value = hf[key]
        if tuple(value.shape) != tuple(ref.shape):
            raise VisionWeightsError(f"{key}: shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        weights[key] = value.to(dtype) if dtype is not None else value
    model.load_state_dict(weights, assign=True)
    return model.eval()
