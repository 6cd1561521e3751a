"""Whether a checkpoint's UNet predicts the noise (eps) or the velocity (v).

Weights do not say whether an SD2 model predicts eps (512-base) or v (768-v). The order of evidence
is: explicit override, safetensors metadata (``modelspec.prediction_type``, kohya's
``ss_v_parameterization``, a diffusers scheduler's ``prediction_type``), a ``v_pred`` marker key, then
ComfyUI's weight statistic for 4-channel SD2 UNets: the population std of
``transformer_blocks.0.norm1.bias`` in the last (full-resolution) output attention block
(``output_blocks.11.1`` in SD2) is > 0.09 for the 768-v models and smaller for 512-base.
SD2 inpainting is always eps (it was only released as eps). SD1 and SDXL default to eps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .spec import ModelFamily

# Threshold from ComfyUI's SD2 model_type heuristic (see module docstring).
SD2_V_STD_THRESHOLD = 0.09

_V_WORDS = {"v", "v_prediction", "v-prediction", "vpred", "v_pred"}
_EPS_WORDS = {"eps", "epsilon", "noise"}
_LAST_ATTN_BIAS = re.compile(r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")


@dataclass(frozen=True)
class Prediction:
    kind: str  # "eps" or "v"
    source: str  # "override", "metadata", "v_pred key", "weight statistic", "default"
    family: ModelFamily  # SD2 becomes SD2_V (or back) to match the prediction
    notes: tuple[str, ...] = field(default_factory=tuple)


def _word(value: str) -> str | None:
    v = value.strip().lower()
    return "v" if v in _V_WORDS else "eps" if v in _EPS_WORDS else None


def prediction_from_metadata(metadata: Mapping[str, str]) -> str | None:
    for key in ("modelspec.prediction_type", "prediction_type"):
        found = _word(metadata.get(key, ""))
        if found is not None:
            return found
    flag = metadata.get("ss_v_parameterization", "").strip().lower()
    if flag in ("true", "1"):
        return "v"
    if flag in ("false", "0"):
        return "eps"
    return None


def _normalize_prediction(value: str) -> str:
    found = _word(value)
    if found is None:
        raise ValueError(f"prediction_type must be 'eps' or 'v', got {value!r}")
    return found


def _last_output_attention_bias(unet_sd: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    best: tuple[int, str] | None = None
    for k in unet_sd:
        m = _LAST_ATTN_BIAS.match(k)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), k)
    return unet_sd[best[1]] if best else None


def _sd2_from_weights(unet_sd: Mapping[str, torch.Tensor]) -> tuple[str, str, str]:
    bias = _last_output_attention_bias(unet_sd)
    if bias is not None and float(bias.float().std(unbiased=False)) > SD2_V_STD_THRESHOLD:
        pred, source = "v", "weight statistic"
    else:
        pred, source = "eps", "weight statistic" if bias is not None else "default"
    note = (
        f"SD2 prediction type guessed as {pred!r} from weight statistics (ComfyUI's heuristic); "
        "pass prediction_type='eps' or 'v' if images come out wrong"
    )
    return pred, source, note


def detect_prediction(
    sd: Mapping[str, torch.Tensor],
    unet_sd: Mapping[str, torch.Tensor],
    family: ModelFamily,
    *,
    is_inpaint: bool,
    metadata: Mapping[str, str],
    override: str | None,
) -> Prediction:
    """The prediction type of a checkpoint (``sd``: all keys; ``unet_sd``: UNet keys without prefix)."""
    notes: list[str] = []
    meta_pred = prediction_from_metadata(metadata)
    if override is not None:
        pred, source = _normalize_prediction(override), "override"
    elif meta_pred is not None:
        pred, source = meta_pred, "metadata"
    elif "v_pred" in sd or "edm_vpred.sigma_max" in sd:
        pred, source = "v", "v_pred key"
    elif family.is_sd2 and not is_inpaint:
        pred, source, note = _sd2_from_weights(unet_sd)
        notes.append(note)
    else:
        pred, source = "eps", "default"
    if family.is_sd2:
        family = ModelFamily.SD2_V if pred == "v" else ModelFamily.SD2
    elif pred == "v":
        notes.append(f"{family.value} checkpoint with v-prediction ({source})")
    return Prediction(pred, source, family, tuple(notes))
