"""Text encoders in a single-file checkpoint, and the model family they (with the UNet) imply.

Key layouts (CompVis ``ldm`` for SD1/SD2, Stability ``sgm`` for SDXL):

==============  =====================================================  ==============  ======
family          text encoder prefix(es)                                context (UNet)  ADM
==============  =====================================================  ==============  ======
SD1             ``cond_stage_model.transformer.text_model.`` (HF CLIP)  = CLIP-L width  --
SD2 / SD2_V     ``cond_stage_model.model.`` (OpenCLIP ViT-H)            = ViT-H width   --
                (or ``conditioner.embedders.0.model.`` in sgm format)
SDXL            ``conditioner.embedders.0.transformer.text_model.`` +   L + bigG width  yes
                ``conditioner.embedders.1.model.`` (OpenCLIP bigG)
SDXL_REFINER    ``conditioner.embedders.0.model.`` (bigG only)           = bigG width    yes
==============  =====================================================  ==============  ======

The real widths are 768 (L), 1024 (H), 1280 (bigG), i.e. contexts 768 / 1024 / 2048 / 1280 and ADM
sizes 2816 (SDXL) / 2560 (refiner); the rules compare widths with each other rather than with these
constants, so tiny test checkpoints and unusually sized fine-tunes are recognised too. Without text
encoder weights the family falls back to the real context sizes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .io import CheckpointError
from .spec import (
    SD1_CLIP_LEGACY_PREFIX,
    SD1_CLIP_PREFIX,
    SD2_OPENCLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SGM_OPENCLIP0_PREFIX,
    ModelFamily,
    TextEncoderSpec,
)

_HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")
_OC_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.")

# Context width (UNet cross-attention input) of the real families, for files without text encoders.
_FAMILY_BY_CONTEXT = {
    768: ModelFamily.SD1,
    1024: ModelFamily.SD2,
    2048: ModelFamily.SDXL,
    1280: ModelFamily.SDXL_REFINER,
}


def _text_spec(sd: Mapping[str, torch.Tensor], prefix: str, kind: str, layout: str) -> TextEncoderSpec | None:
    """The tower stored under ``prefix`` in the HF (``embeddings.token_embedding``) or OpenCLIP
    (``token_embedding``) layout; None when it is not there."""
    hf = layout == "hf"
    tok = sd.get(prefix + ("embeddings.token_embedding.weight" if hf else "token_embedding.weight"))
    if tok is None:
        return None
    rx, lead = (_HF_LAYER, "text_model.") if hf else (_OC_LAYER, "")
    layers = {
        int(m.group(1)) for k in sd if k.startswith(prefix) and (m := rx.match(lead + k[len(prefix) :]))
    }
    return TextEncoderSpec(kind, prefix, layout, int(tok.shape[1]), len(layers))


def normalize_legacy_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename SD1 text-encoder keys saved by old transformers (no ``text_model.`` level)."""
    if any(k.startswith(SD1_CLIP_PREFIX) for k in sd) or not any(
        k.startswith(SD1_CLIP_LEGACY_PREFIX) for k in sd
    ):
        return sd
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith(SD1_CLIP_LEGACY_PREFIX):
            k = SD1_CLIP_PREFIX + k[len(SD1_CLIP_LEGACY_PREFIX) :]
        out[k] = v
    return out


def _family_from_towers(
    sd: Mapping[str, torch.Tensor], adm_dim: int | None, path: str
) -> tuple[ModelFamily | None, tuple[TextEncoderSpec, ...]]:
    """(family, encoders) from the text towers present; (None, ()) when there are none."""
    clip_l = _text_spec(sd, SD1_CLIP_PREFIX, "clip_l", "hf") or _text_spec(
        sd, SD1_CLIP_LEGACY_PREFIX, "clip_l", "hf"
    )
    clip_h = _text_spec(sd, SD2_OPENCLIP_PREFIX, "clip_h", "openclip")
    xl_l = _text_spec(sd, SDXL_CLIP_L_PREFIX, "clip_l", "hf")
    xl_g = _text_spec(sd, SDXL_CLIP_G_PREFIX, "clip_g", "openclip")
    sgm0 = _text_spec(sd, SGM_OPENCLIP0_PREFIX, "clip_g", "openclip")
    if xl_l is not None and xl_g is not None:
        return ModelFamily.SDXL, (xl_l, xl_g)
    if sgm0 is not None and xl_l is None:
        if adm_dim is not None:
            return ModelFamily.SDXL_REFINER, (sgm0,)
        # SD2 saved by Stability's sgm code (e.g. SD-Turbo): OpenCLIP-H as embedder 0.
        return ModelFamily.SD2, (TextEncoderSpec("clip_h", sgm0.prefix, "openclip", sgm0.width, sgm0.layers),)
    if clip_h is not None:
        return ModelFamily.SD2, (clip_h,)
    if clip_l is not None:
        return ModelFamily.SD1, (clip_l,)
    if xl_l is not None or xl_g is not None:
        missing = (
            "conditioner.embedders.1.model.*" if xl_g is None else "conditioner.embedders.0.transformer.*"
        )
        raise CheckpointError(
            path, f"SDXL checkpoint with only one of its two text encoders: {missing} is missing"
        )
    return None, ()


def _family_from_unet_only(context_dim: int | None, adm_dim: int | None, path: str) -> ModelFamily:
    family = _FAMILY_BY_CONTEXT.get(context_dim or -1)
    if family is None or (family.is_sdxl != (adm_dim is not None)):
        raise CheckpointError(
            path,
            "cannot tell the model family: the file has no text-encoder weights (looked for "
            f"'{SD1_CLIP_PREFIX}', '{SD2_OPENCLIP_PREFIX}', '{SDXL_CLIP_L_PREFIX}', '{SDXL_CLIP_G_PREFIX}', "
            f"'{SGM_OPENCLIP0_PREFIX}') and the UNet's cross-attention width {context_dim} "
            f"(ADM input {adm_dim}) is not one of SD1 768, SD2 1024, SDXL 2048+ADM, refiner 1280+ADM",
        )
    return family


def detect_text_encoders(
    sd: Mapping[str, torch.Tensor], *, context_dim: int | None, adm_dim: int | None, path: str
) -> tuple[ModelFamily, tuple[TextEncoderSpec, ...], list[str]]:
    """(family, text encoders, notes) of a checkpoint whose UNet has this context width and ADM size.

    Raises CheckpointError when the text encoders and the UNet disagree, or when neither tells the family.
    """
    family, encoders = _family_from_towers(sd, adm_dim, path)
    if family is None:
        note = "no text-encoder weights in the file; load a text encoder separately (CLIPLoader / DualCLIPLoader)"
        return _family_from_unet_only(context_dim, adm_dim, path), (), [note]
    expected = sum(e.width for e in encoders)  # SDXL concatenates CLIP-L and bigG hidden states
    if context_dim is not None and context_dim != expected:
        raise CheckpointError(
            path,
            f"inconsistent checkpoint: its text encoder(s) {[e.kind + ':' + str(e.width) for e in encoders]} "
            f"look like {family.value} and give {expected}-wide conditioning, but the UNet's "
            f"cross-attention ('...attn2.to_k.weight') expects {context_dim}",
        )
    if family.is_sdxl and adm_dim is None:
        raise CheckpointError(
            path,
            f"{family.value} text encoders but the UNet has no 'label_emb.0.0.weight' (size conditioning)",
        )
    return family, encoders, []
