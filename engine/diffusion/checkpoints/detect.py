"""Which model family a checkpoint holds, read from its keys and tensor shapes.

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

Prediction type: weights do not say whether an SD2 model predicts eps (512-base) or v (768-v).
The order of evidence is: explicit override, safetensors metadata (``modelspec.prediction_type``,
kohya's ``ss_v_parameterization``, a diffusers scheduler's ``prediction_type``), a ``v_pred`` marker
key, then ComfyUI's weight statistic for 4-channel SD2 UNets: the population std of
``transformer_blocks.0.norm1.bias`` in the last (full-resolution) output attention block
(``output_blocks.11.1`` in SD2) is > 0.09 for the 768-v models and smaller for 512-base.
SD2 inpainting is always eps (it was only released as eps). SD1 and SDXL default to eps.
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .io import CheckpointError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

SD1_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SD1_CLIP_LEGACY_PREFIX = "cond_stage_model.transformer."  # transformers < 4.x layout without text_model.
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
SGM_OPENCLIP0_PREFIX = "conditioner.embedders.0.model."

# Threshold from ComfyUI's SD2 model_type heuristic (see module docstring).
SD2_V_STD_THRESHOLD = 0.09


class ModelFamily(enum.StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"  # eps prediction, 512-base (SD-Turbo has this architecture, too)
    SD2_V = "sd2_v"  # v prediction, 768-v
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"

    @property
    def is_sdxl(self) -> bool:
        return self in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER)


@dataclass(frozen=True)
class TextEncoderSpec:
    kind: str  # "clip_l" (OpenAI CLIP ViT-L), "clip_h" (OpenCLIP ViT-H), "clip_g" (OpenCLIP ViT-bigG)
    prefix: str  # key prefix inside the checkpoint
    layout: str  # "hf" or "openclip"
    width: int
    layers: int


@dataclass(frozen=True)
class CheckpointSpec:
    family: ModelFamily
    prediction_type: str  # "eps" or "v"
    prediction_source: str  # "override", "metadata", "v_pred key", "weight statistic", "default"
    is_inpaint: bool
    unet_config: Any  # engine.diffusion.models.unet.UNetConfig | None
    vae_config: Any  # engine.diffusion.models.vae.VAEConfig | None
    text_encoders: tuple[TextEncoderSpec, ...]
    components: frozenset[str]  # subset of {"unet", "vae", "text"} present in the file
    filename: str = ""
    unet_prefix: str = UNET_PREFIX
    vae_prefix: str = VAE_PREFIX
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def context_dim(self) -> int | None:
        return getattr(self.unet_config, "context_dim", None)


# ---- non-checkpoint files --------------------------------------------------------------------

_LORA_MARKERS = (
    ".lora_down.",
    ".lora_up.",
    ".lora_A.",
    ".lora_B.",
    "lora_unet_",
    "lora_te",
    ".hada_w1_",
    ".lokr_w1",
)


def _top_prefixes(keys: list[str], depth: int = 2, limit: int = 8) -> str:
    counts = Counter(".".join(k.split(".")[:depth]) for k in keys)
    return ", ".join(f"{p}.* ({n})" for p, n in counts.most_common(limit))


def _reject_other_kinds(keys: list[str], path: str) -> None:
    """Raise a specific CheckpointError when the file is a known non-checkpoint kind."""
    if any(m in k or k.startswith(m) for k in keys for m in _LORA_MARKERS):
        sample = next(k for k in keys if any(m in k or k.startswith(m) for m in _LORA_MARKERS))
        raise CheckpointError(
            path,
            f"this is a LoRA (e.g. key {sample!r}), not a full checkpoint: put it in models/loras "
            "and apply it to a checkpoint with LoraLoader",
        )
    if any(k.startswith(("control_model.", "input_hint_block.")) for k in keys) or any(
        "controlnet_cond_embedding" in k for k in keys
    ):
        raise CheckpointError(
            path,
            "this is a ControlNet, not a checkpoint: put it in models/controlnet and use ControlNetLoader",
        )
    if set(keys) <= {"emb_params", "clip_l", "clip_g", "string_to_param.*", "string_to_token.*"}:
        raise CheckpointError(
            path,
            "this is a textual-inversion embedding: put it in models/embeddings and write embedding:NAME",
        )
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    if not has_unet:
        bare_vae = any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.")) for k in keys)
        prefixed_vae = any(k.startswith(VAE_PREFIX) for k in keys)
        if bare_vae or (
            prefixed_vae and not any(k.startswith(("cond_stage_model.", "conditioner.")) for k in keys)
        ):
            raise CheckpointError(
                path,
                "this is a VAE file (only encoder/decoder weights, no UNet): put it in models/vae "
                "and load it with VAELoader",
            )
        if any(k.startswith("input_blocks.0.0.") for k in keys) or any(
            k.startswith("down_blocks.") for k in keys
        ):
            raise CheckpointError(
                path,
                "this file holds a bare UNet (no 'model.diffusion_model.' prefix, no text encoder or VAE): "
                "load it as a diffusion model (UNETLoader), not as a checkpoint",
            )
        if any(k.startswith(("text_model.", "transformer.resblocks.")) for k in keys):
            raise CheckpointError(
                path, "this is a text-encoder file, not a checkpoint: load it with CLIPLoader"
            )
        shapes_hint = _top_prefixes(keys)
        raise CheckpointError(
            path,
            "not a Stable Diffusion checkpoint: no UNet weights under 'model.diffusion_model.' were found. "
            f"Looked for 'model.diffusion_model.*', 'first_stage_model.*', 'cond_stage_model.*' and "
            f"'conditioner.embedders.*'; the file's keys start with: {shapes_hint}",
        )


# ---- text encoders -----------------------------------------------------------------------------

_HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")
_OC_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.")


def _hf_text_spec(sd: Mapping[str, torch.Tensor], prefix: str, kind: str) -> TextEncoderSpec | None:
    tok = sd.get(prefix + "embeddings.token_embedding.weight")
    if tok is None:
        return None
    layers = {
        int(m.group(1))
        for k in sd
        if k.startswith(prefix) and (m := _HF_LAYER.match("text_model." + k[len(prefix) :]))
    }
    return TextEncoderSpec(kind, prefix, "hf", int(tok.shape[1]), len(layers))


def _openclip_text_spec(sd: Mapping[str, torch.Tensor], prefix: str, kind: str) -> TextEncoderSpec | None:
    tok = sd.get(prefix + "token_embedding.weight")
    if tok is None:
        return None
    layers = {
        int(m.group(1)) for k in sd if k.startswith(prefix) and (m := _OC_LAYER.match(k[len(prefix) :]))
    }
    return TextEncoderSpec(kind, prefix, "openclip", int(tok.shape[1]), len(layers))


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


# ---- prediction type ---------------------------------------------------------------------------

_V_WORDS = {"v", "v_prediction", "v-prediction", "vpred", "v_pred"}
_EPS_WORDS = {"eps", "epsilon", "noise"}


def prediction_from_metadata(metadata: Mapping[str, str]) -> str | None:
    for key in ("modelspec.prediction_type", "prediction_type"):
        value = metadata.get(key, "").strip().lower()
        if value in _V_WORDS:
            return "v"
        if value in _EPS_WORDS:
            return "eps"
    flag = metadata.get("ss_v_parameterization", "").strip().lower()
    if flag in ("true", "1"):
        return "v"
    if flag in ("false", "0"):
        return "eps"
    return None


def _normalize_prediction(value: str) -> str:
    v = value.strip().lower()
    if v in _V_WORDS:
        return "v"
    if v in _EPS_WORDS:
        return "eps"
    raise ValueError(f"prediction_type must be 'eps' or 'v', got {value!r}")


def _last_output_attention_bias(unet_sd: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    rx = re.compile(r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")
    best: tuple[int, str] | None = None
    for k in unet_sd:
        m = rx.match(k)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), k)
    return unet_sd[best[1]] if best else None


# ---- main entry ----------------------------------------------------------------------------------


def detect_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    *,
    filename: str | Path = "<state dict>",
    prediction_type: str | None = None,
    metadata: Mapping[str, str] | None = None,
    infer_configs: bool = True,
) -> CheckpointSpec:
    """Identify the family, prediction type, configs and components of a single-file checkpoint.

    ``state_dict`` maps the file's keys to tensors (values are only read for the SD2 weight
    statistic). ``infer_configs=False`` skips building UNet/VAE configs (for callers that only need
    the family). Raises :class:`CheckpointError` naming the file for anything that is not an SD1,
    SD2 or SDXL checkpoint, with a specific message for LoRAs, VAEs, ControlNets and embeddings.
    """
    path = str(filename)
    keys = list(state_dict.keys())
    if not keys:
        raise CheckpointError(path, "the file contains no tensors (empty state dict)")
    _reject_other_kinds(keys, path)
    sd = state_dict
    notes: list[str] = []

    unet_keys = {k[len(UNET_PREFIX) :]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    if "input_blocks.0.0.weight" not in unet_keys:
        raise CheckpointError(
            path,
            "UNet weights are incomplete: 'model.diffusion_model.input_blocks.0.0.weight' is missing "
            f"(UNet keys present: {len(unet_keys)}); the file is damaged or not an SD checkpoint",
        )
    in_channels = int(unet_keys["input_blocks.0.0.weight"].shape[1])
    attn_k = next((v for k, v in unet_keys.items() if k.endswith("attn2.to_k.weight")), None)
    context_dim = int(attn_k.shape[1]) if attn_k is not None else None
    adm = unet_keys.get("label_emb.0.0.weight")
    adm_dim = int(adm.shape[1]) if adm is not None else None

    clip_l = _hf_text_spec(sd, SD1_CLIP_PREFIX, "clip_l") or _hf_text_spec(
        sd, SD1_CLIP_LEGACY_PREFIX, "clip_l"
    )
    clip_h = _openclip_text_spec(sd, SD2_OPENCLIP_PREFIX, "clip_h")
    xl_l = _hf_text_spec(sd, SDXL_CLIP_L_PREFIX, "clip_l")
    xl_g = _openclip_text_spec(sd, SDXL_CLIP_G_PREFIX, "clip_g")
    sgm0 = _openclip_text_spec(sd, SGM_OPENCLIP0_PREFIX, "clip_g")

    family: ModelFamily | None = None
    encoders: tuple[TextEncoderSpec, ...] = ()
    expected_context: int | None = None
    if xl_l is not None and xl_g is not None:
        family, encoders, expected_context = ModelFamily.SDXL, (xl_l, xl_g), xl_l.width + xl_g.width
    elif sgm0 is not None and xl_l is None:
        if adm_dim is not None:
            family, encoders, expected_context = ModelFamily.SDXL_REFINER, (sgm0,), sgm0.width
        else:
            # SD2 saved by Stability's sgm code (e.g. SD-Turbo): OpenCLIP-H as embedder 0.
            h = TextEncoderSpec("clip_h", sgm0.prefix, "openclip", sgm0.width, sgm0.layers)
            family, encoders, expected_context = ModelFamily.SD2, (h,), h.width
    elif clip_h is not None:
        family, encoders, expected_context = ModelFamily.SD2, (clip_h,), clip_h.width
    elif clip_l is not None:
        family, encoders, expected_context = ModelFamily.SD1, (clip_l,), clip_l.width
    elif xl_l is not None or xl_g is not None:
        missing = (
            "conditioner.embedders.1.model.*" if xl_g is None else "conditioner.embedders.0.transformer.*"
        )
        raise CheckpointError(
            path, f"SDXL checkpoint with only one of its two text encoders: {missing} is missing"
        )
    else:
        # No text encoder in the file: fall back to the real families' context/ADM sizes.
        by_context = {
            768: ModelFamily.SD1,
            1024: ModelFamily.SD2,
            2048: ModelFamily.SDXL,
            1280: ModelFamily.SDXL_REFINER,
        }
        family = by_context.get(context_dim or -1)
        if family is None or (family.is_sdxl != (adm_dim is not None)):
            raise CheckpointError(
                path,
                "cannot tell the model family: the file has no text-encoder weights (looked for "
                f"'{SD1_CLIP_PREFIX}', '{SD2_OPENCLIP_PREFIX}', '{SDXL_CLIP_L_PREFIX}', '{SDXL_CLIP_G_PREFIX}', "
                f"'{SGM_OPENCLIP0_PREFIX}') and the UNet's cross-attention width {context_dim} "
                f"(ADM input {adm_dim}) is not one of SD1 768, SD2 1024, SDXL 2048+ADM, refiner 1280+ADM",
            )
        notes.append(
            "no text-encoder weights in the file; load a text encoder separately (CLIPLoader / DualCLIPLoader)"
        )

    if expected_context is not None and context_dim is not None and context_dim != expected_context:
        raise CheckpointError(
            path,
            f"inconsistent checkpoint: its text encoder(s) {[e.kind + ':' + str(e.width) for e in encoders]} "
            f"look like {family.value} and give {expected_context}-wide conditioning, but the UNet's "
            f"cross-attention ('...attn2.to_k.weight') expects {context_dim}",
        )
    if family.is_sdxl and adm_dim is None:
        raise CheckpointError(
            path,
            f"{family.value} text encoders but the UNet has no 'label_emb.0.0.weight' (size conditioning)",
        )

    is_inpaint = in_channels == 9
    if in_channels not in (4, 9):
        notes.append(
            f"UNet has {in_channels} input channels (4 = txt2img, 9 = inpainting); treated as a variant"
        )

    # ---- prediction type
    meta = dict(metadata or {})
    pred: str
    source: str
    meta_pred = prediction_from_metadata(meta)
    if prediction_type is not None:
        pred, source = _normalize_prediction(prediction_type), "override"
    elif meta_pred is not None:
        pred, source = meta_pred, "metadata"
    elif "v_pred" in sd or "edm_vpred.sigma_max" in sd:
        pred, source = "v", "v_pred key"
    elif family in (ModelFamily.SD2, ModelFamily.SD2_V) and not is_inpaint:
        bias = _last_output_attention_bias(unet_keys)
        if bias is not None and float(bias.float().std(unbiased=False)) > SD2_V_STD_THRESHOLD:
            pred, source = "v", "weight statistic"
        else:
            pred, source = "eps", "weight statistic" if bias is not None else "default"
        notes.append(
            f"SD2 prediction type guessed as {pred!r} from weight statistics (ComfyUI's heuristic); "
            "pass prediction_type='eps' or 'v' if images come out wrong"
        )
    else:
        pred, source = "eps", "default"
    if family in (ModelFamily.SD2, ModelFamily.SD2_V):
        family = ModelFamily.SD2_V if pred == "v" else ModelFamily.SD2
    elif pred == "v":
        notes.append(f"{family.value} checkpoint with v-prediction ({source})")

    name = Path(path).name.lower()
    title = meta.get("modelspec.title", "").lower() + meta.get("modelspec.architecture", "").lower()
    if "turbo" in name or "turbo" in title:
        notes.append(
            "SD-Turbo/SDXL-Turbo (adversarial diffusion distillation): same architecture as its base; "
            "sample with 1-4 steps and cfg 1.0"
        )

    components = {"unet"}
    vae_keys = {k[len(VAE_PREFIX) :]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    if vae_keys:
        components.add("vae")
    else:
        notes.append(
            f"{Path(path).name} contains no VAE weights (no 'first_stage_model.*' keys): load a VAE with "
            "VAELoader (e.g. the family's standard VAE from models/vae)"
        )
    if encoders:
        components.add("text")

    unet_config = vae_config = None
    if infer_configs:
        unet_config = _unet_config(unet_keys, family, path)
        if vae_keys:
            vae_config = _vae_config(vae_keys, family, path)

    return CheckpointSpec(
        family=family,
        prediction_type=pred,
        prediction_source=source,
        is_inpaint=is_inpaint,
        unet_config=unet_config,
        vae_config=vae_config,
        text_encoders=encoders,
        components=frozenset(components),
        filename=path,
        notes=tuple(notes),
    )


def _unet_config(unet_sd: Mapping[str, torch.Tensor], family: ModelFamily, path: str) -> Any:
    from engine.diffusion.models.unet import unet_config_from_state_dict

    # Attention heads are the one thing shapes do not show: SD1 uses 8 heads, SD2/SDXL 64-channel heads.
    kw: dict[str, int] = {"num_heads": 8} if family is ModelFamily.SD1 else {"num_head_channels": 64}
    try:
        return unet_config_from_state_dict(unet_sd, **kw)
    except ValueError as e:
        raise CheckpointError(path, f"cannot read the UNet configuration: {e}") from None


def vae_scaling_factor(family: ModelFamily | None) -> float:
    # Latent scaling factors from the original configs: 0.18215 (SD1/SD2, LDM paper appendix), 0.13025 (SDXL).
    return 0.13025 if family is not None and family.is_sdxl else 0.18215


def _vae_config(vae_sd: Mapping[str, torch.Tensor], family: ModelFamily | None, path: str) -> Any:
    from engine.diffusion.models.vae import vae_config_from_state_dict

    try:
        return vae_config_from_state_dict(vae_sd, scaling_factor=vae_scaling_factor(family))
    except ValueError as e:
        raise CheckpointError(path, f"cannot read the VAE configuration: {e}") from None
