"""Build the SD3/SD3.5 (MMDiT) and FLUX.1 transformers, their 16-channel VAE and text weights from files.

Entry points:

- `load_flow_checkpoint`: an all-in-one file (transformer + VAE + text encoders, ``flow_detect`` has the
  prefixes) or a diffusion-model-only file; each component in its own dtype (``dtypes={"unet": ...,
  "vae": ..., "text": ...}``, the component names of ``loader.load_checkpoint``);
- `load_diffusion_model`: just the transformer (``models/diffusion_models``, ``models/unet``).

fp8 scaled files: ``<layer>.weight`` is float8 and ``<layer>.scale_weight`` a float32 scalar; the real
weight is their product. They are dequantized here, at load time, into the component's compute dtype
(bfloat16 when neither the file nor the caller names a floating-point dtype): one multiply per layer at
load instead of one per forward, at the cost of holding the weights at compute precision. Plain fp8 files
(no ``scale_weight``) are cast the same way. Keeping scaled fp8 as storage with per-layer casting needs
the scale inside the cast (``engine.memory.casting``); that is not done yet.

The text encoders are returned as state dicts per kind (``clip_l``, ``clip_g``, ``t5xxl``, the keys
after ``text_encoders.<kind>.transformer.``, already dequantized); the encoder stacks live in
``engine.diffusion.text``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.diffusion.models.flux import Flux
from engine.diffusion.models.mmdit import MMDiT

from .diffusers_layout import strip_prefix
from .flow_detect import SCALED_FP8_KEY, TEXT_ENCODER_PREFIXES, FlowSpec, detect_flow_file
from .io import SAFETENSORS_SUFFIXES, CheckpointError, read_safetensors_header, read_state_dict
from .loader import ComponentDtypes, assign_weights, build_vae

FLOW_COMPONENTS = ("unet", "vae", "text")
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
# Compute dtype for fp8 weights when nothing else says which (ComfyUI's default on current GPUs).
FP8_COMPUTE_DEFAULT = torch.bfloat16


@dataclass
class LoadedFlowCheckpoint:
    spec: FlowSpec
    transformer: Any  # MMDiT | Flux | None
    vae: Any  # AutoencoderKL | None
    text_state_dicts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def dequantize_fp8(sd: Mapping[str, torch.Tensor], dtype_of: Any = None) -> dict[str, torch.Tensor]:
    """Replace fp8 weights (with their ``scale_weight``, if any) by ``weight * scale`` in a compute dtype.

    ``dtype_of(key) -> dtype | None`` names each tensor's target dtype (None: bfloat16 for fp8 tensors,
    unchanged for others). A scaled weight asked for in an fp8 dtype becomes bfloat16 (the product is not
    re-quantized); an unscaled one is stored in the fp8 dtype asked for. ``scale_weight``/``scale_input``
    and ``scaled_fp8`` marker keys are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith((".scale_weight", ".scale_input")) or k.rsplit(".", 1)[-1] == SCALED_FP8_KEY:
            continue
        target = dtype_of(k) if dtype_of is not None else None
        scale_key = k[: -len("weight")] + "scale_weight" if k.endswith("weight") else None
        scale = sd.get(scale_key) if scale_key else None
        if scale is None and target in _FP8:
            v = v.to(target)  # unscaled fp8 storage asked for: kept (cast per layer at run time)
        elif v.dtype in _FP8 or scale is not None:
            w = v.float()
            if scale is not None:
                w = w * scale.float().to(w.device)
            v = w.to(target if target is not None and target not in _FP8 else FP8_COMPUTE_DEFAULT)
        elif target is not None and v.is_floating_point():
            v = v.to(target)
        out[k] = v
    return out


def _component(key: str) -> str:
    if key.startswith("text_encoders."):
        return "text"
    if key.startswith(("first_stage_model.", "vae.")):
        return "vae"
    return "unet"


def build_transformer(spec: FlowSpec, sd: Mapping[str, torch.Tensor], *, dtype: torch.dtype) -> nn.Module:
    """The family's transformer on the meta device, then the weights assigned (strict)."""
    cls = MMDiT if spec.family == "sd3" else Flux
    model = cls(spec.transformer_config, dtype=dtype, device="meta")
    what = "MMDiT" if spec.family == "sd3" else "Flux"
    return assign_weights(
        model, sd, dtype=dtype, path=spec.filename, what=what, prefix=spec.transformer_prefix
    )


def _dominant(sd: Mapping[str, torch.Tensor]) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for v in sd.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=lambda d: counts[d]) if counts else torch.float32


def _file_dtypes(p: Path) -> dict[str, torch.dtype] | None:
    """Every tensor's stored dtype from a safetensors header, None for pickle files (read whole)."""
    if p.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return None
    return {name: info.dtype for name, info in read_safetensors_header(p).tensors.items()}


def _is_fp8_part(key: str, stored: torch.dtype) -> bool:
    return stored in _FP8 or key.endswith((".scale_weight", ".scale_input"))


def _check(components: Iterable[str]) -> set[str]:
    comps = set(components)
    if comps - set(FLOW_COMPONENTS):
        raise ValueError(
            f"components must be a subset of {FLOW_COMPONENTS}, got {sorted(comps - set(FLOW_COMPONENTS))}"
        )
    return comps


def load_flow_checkpoint(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    dtypes: ComponentDtypes | None = None,
    components: Iterable[str] = FLOW_COMPONENTS,
) -> LoadedFlowCheckpoint:
    """Load an SD3/SD3.5 or FLUX.1 file (all-in-one or diffusion-model-only, plain or fp8 scaled).

    ``dtype`` is every floating-point weight's dtype (None keeps the file's, except fp8 which becomes
    bfloat16); ``dtypes`` overrides it per component ("unet", "vae", "text"). Components absent from the
    file come back as None (empty dict for text) with a note in ``spec.notes``.
    """
    comps = _check(components)
    p = Path(path)
    stored = _file_dtypes(p)

    def wanted(key: str) -> bool:
        return _component(key) in comps

    def dtype_of(key: str) -> torch.dtype | None:
        return (dtypes or {}).get(_component(key)) or dtype

    def read_dtype(key: str) -> torch.dtype | None:
        # Cast while reading (one copy) except fp8 weights and their scales, which must meet first.
        return None if stored is None or _is_fp8_part(key, stored[key]) else dtype_of(key)

    raw = read_state_dict(p, dtype=read_dtype, keys_filter=wanted if stored is not None else None)
    spec = detect_flow_file(raw, filename=p, key_names=None if stored is None else list(stored))

    sd = dequantize_fp8(raw, dtype_of)
    del raw
    return assemble_flow_checkpoint(sd, spec, components=comps, dtype=dtype, dtypes=dtypes, path=p)


def assemble_flow_checkpoint(
    sd: Mapping[str, torch.Tensor],
    spec: FlowSpec,
    *,
    components: Iterable[str],
    dtype: torch.dtype | None,
    dtypes: ComponentDtypes | None,
    path: str | os.PathLike[str],
) -> LoadedFlowCheckpoint:
    """The models of ``spec`` from a state dict in the all-in-one layout (fp8 already dequantized);
    shared by single files and diffusers folders (``flow_diffusers``)."""
    comps = set(components)
    p = Path(path)
    prefix = spec.transformer_prefix

    def dtype_of(key: str) -> torch.dtype | None:
        return (dtypes or {}).get(_component(key)) or dtype

    transformer = vae = None
    texts: dict[str, dict[str, torch.Tensor]] = {}
    if "unet" in comps:
        body = (
            strip_prefix(sd, prefix) if prefix else {k: v for k, v in sd.items() if _component(k) == "unet"}
        )
        unet_dtype = (dtypes or {}).get("unet") or dtype or _dominant(body)
        if unet_dtype in _FP8 and spec.scaled_fp8:
            # Re-quantizing weight * scale without its scale would lose range; see the module doc.
            unet_dtype = FP8_COMPUTE_DEFAULT
        transformer = build_transformer(spec, body, dtype=unet_dtype)
    if "vae" in comps and spec.vae_config is not None and spec.vae_prefix is not None:
        vae_sd = strip_prefix(sd, spec.vae_prefix)
        vae = build_vae(
            spec.vae_config,
            vae_sd,
            dtype=dtype_of(spec.vae_prefix) or _dominant(vae_sd),
            path=str(p),
            prefix=spec.vae_prefix,
        )
    if "text" in comps:
        texts = {kind: strip_prefix(sd, TEXT_ENCODER_PREFIXES[kind]) for kind in spec.text_encoders}
    return LoadedFlowCheckpoint(spec, transformer, vae, texts)


def load_diffusion_model(
    path: str | os.PathLike[str], *, dtype: torch.dtype | None = None
) -> tuple[FlowSpec, nn.Module]:
    """Load only the transformer of an SD3/SD3.5 or FLUX.1 file (``UNETLoader``'s job): its spec and module."""
    loaded = load_flow_checkpoint(path, dtype=dtype, components=("unet",))
    if loaded.transformer is None:  # pragma: no cover - "unet" is always built when asked for
        raise CheckpointError(path, "no transformer weights")
    return loaded.spec, loaded.transformer
