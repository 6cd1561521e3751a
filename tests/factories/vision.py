"""Tiny random-weight image-conditioning files in the real key layouts, for tests.

- CLIP vision towers: Hugging Face ``CLIPVisionModelWithProjection`` / ``SiglipVisionModel`` keys
  (``vision_model.*``, ``visual_projection.weight``: what ComfyUI's models/clip_vision holds) or the
  OpenCLIP visual layout under ``visual.`` (``conv1``, ``class_embedding``, ``transformer.resblocks.N``,
  ``proj``...), written from a ``VisionConfig``.
- Style models: the T2I-Adapter style layout (``style_embedding``, ``transformer_layes.N.*``, ``proj``) and
  FLUX.1 Redux (``redux_up`` / ``redux_down``).
- An SD2.1 unCLIP single-file checkpoint: the tiny SD2-v model of ``tests.factories.checkpoints`` with a
  label embedding on its UNet (``label_emb.0.{0,2}``, input = 2 x the image-embedding width), the image
  encoder under ``embedder.model.visual.`` (OpenCLIP layout) and the ``noise_augmentor.*`` schedule buffers
  the original files store.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints import diffusers_layout as dl
from engine.diffusion.checkpoints.clip_text import hf_to_openclip
from engine.diffusion.checkpoints.spec import UNET_PREFIX, ModelFamily
from engine.diffusion.vision.clip_vision import ClipVisionModel, VisionConfig
from engine.diffusion.vision.loading import OPENCLIP_VISUAL_KEYS, UNCLIP_VISUAL_PREFIX
from engine.diffusion.vision.style import ReduxImageEncoder, StyleAdapter
from engine.diffusion.vision.unclip import squaredcos_cap_v2_betas
from tests.factories.checkpoints import random_state_dict, tiny_single_file_state_dict

_OPENCLIP_TOP = {hf: oc for oc, hf in OPENCLIP_VISUAL_KEYS.items()}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def clip_vision_state_dict(config: VisionConfig, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random HF-layout weights of a vision tower (class embedding and norms scaled as real ones are)."""
    sd = random_state_dict(_shapes(ClipVisionModel(config, device="meta")), seed=seed)
    if "vision_model.embeddings.class_embedding" in sd:
        g = torch.Generator().manual_seed(seed + 99)
        sd["vision_model.embeddings.class_embedding"] = torch.randn(config.hidden_size, generator=g) * 0.5
    return sd


def hf_to_openclip_visual(hf: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """HF vision keys -> an OpenCLIP visual tower under ``prefix`` (``proj`` = the projection transposed)."""
    out = {prefix + _OPENCLIP_TOP[k]: v for k, v in hf.items() if k in _OPENCLIP_TOP}
    if "visual_projection.weight" in hf:
        out[prefix + "proj"] = hf["visual_projection.weight"].t().contiguous()
    layers = {"text_model." + k[len("vision_model.") :]: v for k, v in hf.items() if ".encoder.layers." in k}
    out.update({prefix + k: v for k, v in hf_to_openclip(layers).items()})
    return out


def _save(path: str | os.PathLike[str], sd: dict[str, torch.Tensor]) -> Path:
    """safetensors, or a pickle for .ckpt / .pth / .pt names (.ckpt as the original releases: a
    "state_dict" entry)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in sd.items()}
    if p.suffix == ".ckpt":
        torch.save({"state_dict": sd, "global_step": 0}, p)
    elif p.suffix in (".pth", ".pt"):
        torch.save(sd, p)
    else:
        save_file(sd, str(p), metadata={"format": "pt"})
    return p


def write_clip_vision(
    path: str | os.PathLike[str], config: VisionConfig, *, seed: int = 0, layout: str = "hf"
) -> Path:
    """A models/clip_vision file: ``layout`` "hf" (vision_model.*) or "openclip" (visual.*)."""
    hf = clip_vision_state_dict(config, seed=seed)
    if layout == "hf":
        hf["vision_model.embeddings.position_ids"] = torch.arange(config.num_positions).unsqueeze(0)
        return _save(path, hf)
    if layout != "openclip":
        raise ValueError(f"layout must be 'hf' or 'openclip', got {layout!r}")
    sd = hf_to_openclip_visual(hf)
    sd["logit_scale"] = torch.tensor(math.log(100.0))  # full OpenCLIP files carry the text side's scalars too
    return _save(path, sd)


def style_adapter_state_dict(
    *, width: int = 32, context_dim: int = 32, layers: int = 2, tokens: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    sd = random_state_dict(_shapes(StyleAdapter(width, context_dim, layers, tokens)), seed=seed)
    g = torch.Generator().manual_seed(seed + 5)
    # The release initialises style_embedding and proj with width**-0.5-scaled normals.
    sd["style_embedding"] = torch.randn(1, tokens, width, generator=g) * width**-0.5
    sd["proj"] = torch.randn(width, context_dim, generator=g) * width**-0.5
    return sd


def write_style_adapter(path: str | os.PathLike[str], **kwargs: int) -> Path:
    return _save(path, style_adapter_state_dict(**kwargs))


def redux_state_dict(*, redux_dim: int = 32, txt_dim: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_state_dict(_shapes(ReduxImageEncoder(redux_dim, txt_dim)), seed=seed)


def write_redux(path: str | os.PathLike[str], **kwargs: int) -> Path:
    return _save(path, redux_state_dict(**kwargs))


def _noise_augmentor_buffers() -> dict[str, torch.Tensor]:
    """What the original unCLIP files store under noise_augmentor. (the schedule; ComfyUI recomputes it)."""
    betas = torch.tensor(squaredcos_cap_v2_betas(), dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    buffers = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": abar.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - abar).log(),
        "sqrt_recip_alphas_cumprod": (1 / abar).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / abar - 1).sqrt(),
    }
    return {f"noise_augmentor.{k}": v.float() for k, v in buffers.items()}


def unclip_vision_config() -> VisionConfig:
    """The image encoder of the tiny unCLIP checkpoint (16-wide image embeddings)."""
    return VisionConfig.tiny()


def write_unclip_checkpoint(path: str | os.PathLike[str], *, seed: int = 0, with_vision: bool = True) -> Path:
    """A tiny SD2.1-unCLIP-shaped single file (see the module docstring)."""
    vision = unclip_vision_config()
    assert vision.projection_dim is not None
    adm = 2 * vision.projection_dim
    sd = tiny_single_file_state_dict(ModelFamily.SD2_V, seed=seed)
    ted = int(sd[UNET_PREFIX + "time_embed.0.weight"].shape[0])
    label = random_state_dict(
        {"label_emb.0.0.weight": (ted, adm), "label_emb.0.0.bias": (ted,), "label_emb.0.2.weight": (ted, ted)}
        | {"label_emb.0.2.bias": (ted,)},
        seed=seed + 11,
    )
    sd.update(dl.add_prefix(label, UNET_PREFIX))
    if with_vision:
        sd.update(hf_to_openclip_visual(clip_vision_state_dict(vision, seed=seed + 12), UNCLIP_VISUAL_PREFIX))
    sd.update(_noise_augmentor_buffers())
    return _save(path, sd)


def photomaker_state_dict(
    vision: VisionConfig | None = None, *, second_dim: int = 32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """PhotoMaker's ``id_encoder``: the fuse width is the first projection's (16 for the tiny tower) plus
    ``second_dim``, and must equal the context width of the SDXL model it is used with."""
    from engine.diffusion.vision.photomaker import FuseModule

    vision = vision or VisionConfig.tiny()
    assert vision.projection_dim is not None
    sd = clip_vision_state_dict(vision, seed=seed)
    fuse = vision.projection_dim + second_dim
    extra = {"visual_projection_2.weight": (second_dim, vision.hidden_size)}
    extra |= {f"fuse_module.{k}": v for k, v in _shapes(FuseModule(fuse)).items()}
    sd.update(random_state_dict(extra, seed=seed + 1))
    return sd


def write_photomaker(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """photomaker-v1.bin's layout: a pickle of {"id_encoder": ..., "lora_weights": ...}."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lora = {"unet.down_blocks.0.attentions.0.lora.down.weight": torch.zeros(4, 8)}
    torch.save({"id_encoder": photomaker_state_dict(**kwargs), "lora_weights": lora}, p)
    return p
