"""Tiny SD3/SD3.5 (MMDiT) and FLUX.1 weight files in the real layouts, for loader and sampling tests.

Layouts written (prefixes as ComfyUI writes them, see ``engine.diffusion.checkpoints.flow_detect``):

- all-in-one: ``model.diffusion_model.*`` + the VAE (``first_stage_model.*`` for SD3, ``vae.*`` for Flux)
  + ``text_encoders.{clip_l,clip_g,t5xxl}.transformer.*``;
- diffusion-model-only: the transformer's keys without prefix (``models/diffusion_models``);
- Flux's ``ae.safetensors``: the 16-channel VAE's keys without prefix;
- fp8 scaled: every 2-D weight of the transformer and of T5 stored as float8 e4m3fn divided by a per-tensor
  scale (absmax / 448, e4m3fn's largest value), the scale as ``<layer>.scale_weight`` (float32 scalar) and an
  empty ``scaled_fp8`` marker under each quantized model's prefix, as ComfyUI's ``*_fp8_scaled`` files.

Tiny text encoders keep the families' width relations: for SD3 the CLIP-L/CLIP-G projections (8 + 16)
sum to the tiny MMDiT's pooled width (24) and T5's width is its token width (40); for Flux the CLIP-L
projection is the tiny Flux's ``vec_in_dim`` (24) and T5's width its ``context_in_dim`` (40).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.diffusion.models import flux, mmdit
from engine.diffusion.models.vae import AutoencoderKL, VAEConfig
from engine.diffusion.text import t5
from tests.factories.checkpoints import clip_text_shapes, random_state_dict
from tests.factories.random_weights import randomize_

FP8_MAX = 448.0  # largest finite float8 e4m3fn value
TEXT_PREFIX = {k: f"text_encoders.{k}.transformer." for k in ("clip_l", "clip_g", "t5xxl")}


def tiny_vae16_config(family: str) -> VAEConfig:
    """Test-size 16-channel VAE without quant convs, with the family's scale and shift."""
    preset = VAEConfig.sd3() if family == "sd3" else VAEConfig.flux()
    return VAEConfig(
        ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        z_channels=16,
        embed_dim=16,
        use_quant_conv=False,
        scaling_factor=preset.scaling_factor,
        shift_factor=preset.shift_factor,
    )


def _module_state(model: torch.nn.Module, seed: int, unit: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    randomize_(model, seed, unit=unit)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def tiny_mmdit_state_dict(config: mmdit.MMDiTConfig = mmdit.TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    return _module_state(mmdit.MMDiT(config), seed, unit=("pos_embed",))


def tiny_flux_state_dict(config: flux.FluxConfig = flux.TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    return _module_state(flux.Flux(config), seed)


def tiny_vae16_state_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return _module_state(AutoencoderKL(tiny_vae16_config(family)), seed)


def tiny_text_state_dicts(family: str, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """The text encoders of an all-in-one file, per kind, keys after ``text_encoders.<kind>.transformer.``."""
    context = mmdit.TINY.context_in_dim if family == "sd3" else flux.TINY.context_in_dim
    # 160 ids: room for a tiny trained SentencePiece vocabulary with T5's 100 extra ids (t5_fixtures).
    t5_cfg = t5.TINY.replace(d_model=context, num_heads=context // t5.TINY.d_kv, vocab_size=160)
    out = {"t5xxl": _module_state(t5.T5EncoderModel(t5_cfg), seed + 3)}
    if family == "sd3":
        out["clip_l"] = random_state_dict(clip_text_shapes(8, 1, projection=8), seed=seed + 1)
        out["clip_g"] = random_state_dict(clip_text_shapes(16, 1, projection=16), seed=seed + 2)
    else:
        width = flux.TINY.vec_in_dim
        out["clip_l"] = random_state_dict(clip_text_shapes(width, 1, projection=width), seed=seed + 1)
    return out


def scale_to_fp8(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """ComfyUI's fp8-scaled storage of ``sd``: 2-D weights as e4m3fn / scale plus ``scale_weight`` keys."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and v.is_floating_point():
            scale = (v.abs().max().float() / FP8_MAX).clamp_min(1e-12)
            out[prefix + k] = (v.float() / scale).to(torch.float8_e4m3fn)
            out[prefix + k[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[prefix + k] = v
    out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def flow_file_state_dict(
    family: str,
    *,
    config: Any = None,
    layout: str = "all_in_one",
    fp8_scaled: bool = False,
    with_vae: bool = True,
    with_text: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The tensors of a tiny file: ``family`` "sd3" / "flux", ``layout`` "all_in_one" / "diffusion_model"."""
    if family == "sd3":
        body = tiny_mmdit_state_dict(config or mmdit.TINY, seed)
    else:
        body = tiny_flux_state_dict(config or flux.TINY, seed)
    if layout == "diffusion_model":
        return scale_to_fp8(body) if fp8_scaled else body
    prefix = "model.diffusion_model."
    sd = scale_to_fp8(body, prefix) if fp8_scaled else _prefixed(body, prefix)
    if with_vae:
        sd.update(
            _prefixed(
                tiny_vae16_state_dict(family, seed + 5), "first_stage_model." if family == "sd3" else "vae."
            )
        )
    if with_text:
        for kind, text in tiny_text_state_dicts(family, seed + 7).items():
            quantize = fp8_scaled and kind == "t5xxl"
            sd.update(
                scale_to_fp8(text, TEXT_PREFIX[kind]) if quantize else _prefixed(text, TEXT_PREFIX[kind])
            )
    return sd


def write_flow_file(path: str | Path, family: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    """Write `flow_file_state_dict` (same arguments) as safetensors; returns what was written."""
    sd = flow_file_state_dict(family, **kwargs)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return sd


def write_flux_ae(path: str | Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Flux's ``ae.safetensors`` layout: the 16-channel VAE without any prefix."""
    sd = tiny_vae16_state_dict("flux", seed)
    save_file(sd, str(path))
    return sd


TEXT_FILE_NAMES = {
    "clip_l": "clip_l.safetensors",
    "clip_g": "clip_g.safetensors",
    "t5xxl": "t5xxl_fp16.safetensors",
}


def write_text_encoder_files(
    folder: str | Path, family: str, *, seed: int = 0, t5_fp8_scaled: bool = False
) -> dict[str, Path]:
    """The family's text encoders as standalone files (``models/text_encoders``), in the layouts ComfyUI's
    ``clip_l.safetensors`` / ``clip_g.safetensors`` / ``t5xxl_*.safetensors`` use (model keys, no prefix);
    the same weights as an all-in-one file of the same ``seed`` holds. Returns kind -> path."""
    out = {}
    Path(folder).mkdir(parents=True, exist_ok=True)
    for kind, sd in tiny_text_state_dicts(family, seed + 7).items():
        name = TEXT_FILE_NAMES[kind]
        if kind == "t5xxl" and t5_fp8_scaled:
            sd, name = scale_to_fp8(sd), "t5xxl_fp8_e4m3fn_scaled.safetensors"
        out[kind] = Path(folder) / name
        save_file(sd, str(out[kind]))
    return out
