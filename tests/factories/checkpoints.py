"""Deterministic random-weight checkpoints in the real file layouts, for tests and benchmarks.

Test-only code, kept out of the ``engine`` package: tests import it as ``tests.factories.checkpoints``
(pytest runs from the repository root, which ``pythonpath`` in pyproject.toml puts on ``sys.path``);
benchmark scripts put the repository root on ``sys.path`` before importing it.

``write_tiny_checkpoint`` writes a small model of a given family as a single ``.safetensors`` file
in the original layout (see ``engine/diffusion/checkpoints/spec.py`` for the prefixes) or as a
diffusers model folder, from a seed. ``write_full_size_sd15`` streams a full-size SD1.5-architecture file (~2 GB in fp16) without
holding the model in memory.

Shapes come from our own models built on the ``meta`` device (``UNetConfig``/``VAEConfig`` tiny
presets), text encoders follow the Hugging Face CLIP layout (``text_model.embeddings...``,
``text_model.encoder.layers.N...``) converted to OpenCLIP where the family stores OpenCLIP. Weights
are scaled so that tiny forward passes stay numerically tame: matrices ~ N(0, 1/fan_in), 1-D
weights (all norms) ~ 1 + N(0, 0.05^2), biases ~ N(0, 0.02^2), embeddings ~ N(0, 0.02^2).

The SD2 eps/v distinction is emulated the way real files show it (see
``engine/diffusion/checkpoints/detect_prediction.py``): v-prediction files get a wider spread in the
last output attention's ``norm1.bias``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints import diffusers_layout as dl
from engine.diffusion.checkpoints.clip_text import hf_to_openclip
from engine.diffusion.checkpoints.spec import (
    SD1_CLIP_PREFIX,
    SD2_OPENCLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SGM_OPENCLIP0_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    ModelFamily,
    vae_scaling_factor,
)
from engine.diffusion.models.unet import UNetConfig, UNetModel
from engine.diffusion.models.vae import AutoencoderKL, VAEConfig

CLIP_VOCAB = 49408  # the tokenizer's ids go up to 49407, so even tiny towers keep the full vocabulary
CLIP_POSITIONS = 77

_ST_CODES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
}


@dataclasses.dataclass(frozen=True)
class TextTower:
    prefix: str
    layout: str  # "hf" or "openclip"
    width: int
    layers: int
    projection: int | None  # text_projection output size (None: no projection stored)
    hidden_act: str  # quick_gelu (OpenAI CLIP) or gelu (OpenCLIP)


def clip_text_shapes(width: int, layers: int, *, projection: int | None = None) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of an HF ``CLIPTextModel(WithProjection)`` with 4x MLP (the CLIP design)."""
    shapes: dict[str, tuple[int, ...]] = {
        "text_model.embeddings.token_embedding.weight": (CLIP_VOCAB, width),
        "text_model.embeddings.position_embedding.weight": (CLIP_POSITIONS, width),
    }
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (width, width)
            shapes[f"{p}self_attn.{proj}.bias"] = (width,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{ln}.weight"] = (width,)
            shapes[f"{p}{ln}.bias"] = (width,)
        shapes[f"{p}mlp.fc1.weight"] = (4 * width, width)
        shapes[f"{p}mlp.fc1.bias"] = (4 * width,)
        shapes[f"{p}mlp.fc2.weight"] = (width, 4 * width)
        shapes[f"{p}mlp.fc2.bias"] = (width,)
    shapes["text_model.final_layer_norm.weight"] = (width,)
    shapes["text_model.final_layer_norm.bias"] = (width,)
    if projection is not None:
        shapes["text_projection.weight"] = (projection, width)
    return shapes


def _random_tensor(key: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if len(shape) == 0:
        return torch.randn((), generator=g)
    if "embedding" in key:
        return torch.randn(shape, generator=g) * 0.02
    if key.endswith("bias"):
        return torch.randn(shape, generator=g) * 0.02
    if len(shape) == 1:
        return 1.0 + torch.randn(shape, generator=g) * 0.05
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


def random_state_dict(
    shapes: dict[str, tuple[int, ...]], *, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: _random_tensor(k, shapes[k], g).to(dtype) for k in sorted(shapes)}


# ---- family recipes --------------------------------------------------------------------------------


def tiny_family_parts(family: ModelFamily, *, inpaint: bool = False) -> tuple[Any, Any, list[TextTower]]:
    """(UNetConfig, VAEConfig, text towers) of the tiny model of ``family``."""
    in_ch = 9 if inpaint else 4
    vae = VAEConfig.tiny(scaling_factor=vae_scaling_factor(family))
    if family is ModelFamily.SD1:
        return (
            UNetConfig.tiny(in_channels=in_ch),
            vae,
            [TextTower(SD1_CLIP_PREFIX, "hf", 32, 2, None, "quick_gelu")],
        )
    if family in (ModelFamily.SD2, ModelFamily.SD2_V):
        # SD2 files carry the OpenCLIP text projection although SD2 conditions on hidden states only.
        return (
            UNetConfig.tiny_sd2(in_channels=in_ch),
            vae,
            [TextTower(SD2_OPENCLIP_PREFIX, "openclip", 32, 2, 32, "gelu")],
        )
    if family is ModelFamily.SDXL:
        unet = dataclasses.replace(UNetConfig.tiny_sdxl(context_dim=64, pooled_dim=32), in_channels=in_ch)
        return (
            unet,
            vae,
            [
                TextTower(SDXL_CLIP_L_PREFIX, "hf", 32, 2, None, "quick_gelu"),
                TextTower(SDXL_CLIP_G_PREFIX, "openclip", 32, 2, 32, "gelu"),
            ],
        )
    if family is ModelFamily.SDXL_REFINER:
        unet = dataclasses.replace(
            UNetConfig.tiny_sdxl_refiner(context_dim=32, pooled_dim=32), in_channels=in_ch
        )
        return unet, vae, [TextTower(SGM_OPENCLIP0_PREFIX, "openclip", 32, 2, 32, "gelu")]
    raise ValueError(f"unknown family {family!r}")


def _module_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def unet_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    return _module_shapes(UNetModel(config, device="meta"))


def vae_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    return _module_shapes(AutoencoderKL(config, device="meta"))


def tiny_components(
    family: ModelFamily, *, seed: int = 0, dtype: torch.dtype = torch.float32, inpaint: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[tuple[TextTower, dict[str, torch.Tensor]]]]:
    """Random UNet, VAE and HF-layout text-encoder state dicts (no prefixes) for a tiny ``family`` model."""
    unet_cfg, vae_cfg, towers = tiny_family_parts(family, inpaint=inpaint)
    unet = random_state_dict(unet_shapes(unet_cfg), seed=seed, dtype=dtype)
    if family in (ModelFamily.SD2, ModelFamily.SD2_V):
        key = max(
            (
                k
                for k in unet
                if k.endswith(".1.transformer_blocks.0.norm1.bias") and k.startswith("output_blocks.")
            ),
            key=lambda k: int(k.split(".")[1]),
        )
        spread = 0.3 if family is ModelFamily.SD2_V else 0.02
        unet[key] = (
            torch.randn(unet[key].shape, generator=torch.Generator().manual_seed(seed + 7)) * spread
        ).to(dtype)
    vae = random_state_dict(vae_shapes(vae_cfg), seed=seed + 1, dtype=dtype)
    texts = [
        (
            t,
            random_state_dict(
                clip_text_shapes(t.width, t.layers, projection=t.projection), seed=seed + 2 + i, dtype=dtype
            ),
        )
        for i, t in enumerate(towers)
    ]
    return unet, vae, texts


def tiny_single_file_state_dict(
    family: ModelFamily,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    inpaint: bool = False,
    with_vae: bool = True,
) -> dict[str, torch.Tensor]:
    unet, vae, texts = tiny_components(family, seed=seed, dtype=dtype, inpaint=inpaint)
    sd = dl.add_prefix(unet, UNET_PREFIX)
    if with_vae:
        sd.update(dl.add_prefix(vae, VAE_PREFIX))
    for tower, hf in texts:
        if tower.layout == "hf":
            # Real SD1 files also store the position-ids buffer (int64 arange).
            body = {k[len("text_model.") :]: v for k, v in hf.items() if k.startswith("text_model.")}
            sd.update(dl.add_prefix(body, tower.prefix))
            if tower.prefix == SD1_CLIP_PREFIX:
                sd[tower.prefix + "embeddings.position_ids"] = torch.arange(CLIP_POSITIONS).unsqueeze(0)
        else:
            sd.update(dl.add_prefix(hf_to_openclip(hf), tower.prefix))
    return sd


def write_tiny_checkpoint(
    path: str | os.PathLike[str],
    family: ModelFamily | str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    layout: str = "single_file",
    inpaint: bool = False,
    with_vae: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a tiny random checkpoint of ``family``; returns the file (or folder) written.

    ``layout="single_file"``: ``path`` is a ``.safetensors``, ``.ckpt`` or ``.pt`` file in the original
    key layout. ``layout="diffusers"``: ``path`` is a folder with ``model_index.json``, ``unet/``,
    ``vae/``, ``text_encoder/`` (and ``text_encoder_2/`` for SDXL), ``scheduler/``.
    """
    fam = ModelFamily(family)
    p = Path(path)
    if layout == "diffusers":
        return _write_diffusers_folder(p, fam, seed=seed, dtype=dtype, inpaint=inpaint)
    if layout != "single_file":
        raise ValueError(f"layout must be 'single_file' or 'diffusers', got {layout!r}")
    sd = tiny_single_file_state_dict(fam, seed=seed, dtype=dtype, inpaint=inpaint, with_vae=with_vae)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() in (".ckpt", ".pt", ".pth"):
        torch.save({"state_dict": sd, "global_step": 0}, p)
    else:
        save_file(sd, str(p), metadata={"format": "pt", **(metadata or {})})
    return p


# ---- diffusers folders -------------------------------------------------------------------------------


def diffusers_unet_config(cfg: Any) -> dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` config.json for one of our ``UNetConfig`` s (uniform levels)."""
    levels = len(cfg.channel_mult)
    start = 0
    depth_per_level: list[int] = []
    for n in cfg.num_res_blocks:
        depth_per_level.append(max(cfg.transformer_depth[start : start + n]))
        start += n
    channels = [cfg.model_channels * m for m in cfg.channel_mult]
    heads = [cfg.heads_for(c)[0] for c in channels]
    down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth_per_level]
    up = ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depth_per_level)]
    conf: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "block_out_channels": channels,
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": cfg.num_res_blocks[0]
        if len(set(cfg.num_res_blocks)) == 1
        else list(cfg.num_res_blocks),
        "transformer_layers_per_block": [max(d, 1) for d in depth_per_level],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if cfg.transformer_depth_middle else "UNetMidBlock2D",
        "cross_attention_dim": cfg.context_dim,
        # diffusers' "attention_head_dim" is the number of heads per level for these models.
        "attention_head_dim": heads,
        "use_linear_projection": cfg.use_linear_in_transformer,
        "norm_num_groups": 32,
        "sample_size": 8 * levels,
    }
    if cfg.adm_in_channels is not None:
        conf.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=cfg.adm_in_channels,
        )
    del levels
    return conf


def diffusers_vae_config(cfg: Any) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config.json for one of our ``VAEConfig`` s (drop ``_class_name`` to pass it
    to the constructor)."""
    n = len(cfg.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "latent_channels": cfg.z_channels,
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "layers_per_block": cfg.num_res_blocks,
        "norm_num_groups": 32,
        "scaling_factor": cfg.scaling_factor,
        "sample_size": 64,
    }


def clip_text_config_json(
    width: int, layers: int, *, hidden_act: str, projection: int | None, cls: str
) -> dict[str, Any]:
    return {
        "architectures": [cls],
        "model_type": "clip_text_model",
        "vocab_size": CLIP_VOCAB,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // 64),
        "max_position_embeddings": CLIP_POSITIONS,
        "hidden_act": hidden_act,
        "projection_dim": projection or width,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }


def _save_component(folder: Path, filename: str, sd: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / filename), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _write_diffusers_folder(
    root: Path, family: ModelFamily, *, seed: int, dtype: torch.dtype, inpaint: bool
) -> Path:
    unet_cfg, vae_cfg, towers = tiny_family_parts(family, inpaint=inpaint)
    unet, vae, texts = tiny_components(family, seed=seed, dtype=dtype, inpaint=inpaint)
    root.mkdir(parents=True, exist_ok=True)
    pipeline = {
        ModelFamily.SD1: "StableDiffusionPipeline",
        ModelFamily.SD2: "StableDiffusionPipeline",
        ModelFamily.SD2_V: "StableDiffusionPipeline",
        ModelFamily.SDXL: "StableDiffusionXLPipeline",
        ModelFamily.SDXL_REFINER: "StableDiffusionXLImg2ImgPipeline",
    }[family]
    if inpaint:
        pipeline = pipeline.replace("Pipeline", "InpaintPipeline").replace("Img2ImgInpaint", "Inpaint")
    index: dict[str, Any] = {"_class_name": pipeline, "_diffusers_version": "0.30.0"}

    _save_component(
        root / "unet",
        "diffusion_pytorch_model.safetensors",
        dl.unet_original_to_diffusers(unet),
        diffusers_unet_config(unet_cfg),
    )
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    _save_component(
        root / "vae",
        "diffusion_pytorch_model.safetensors",
        dl.vae_original_to_diffusers(vae),
        diffusers_vae_config(vae_cfg),
    )
    index["vae"] = ["diffusers", "AutoencoderKL"]

    # SDXL: CLIP-L in text_encoder/, bigG (with projection) in text_encoder_2/; refiner: bigG only.
    names = (
        ["text_encoder", "text_encoder_2"]
        if family is ModelFamily.SDXL
        else (["text_encoder_2"] if family is ModelFamily.SDXL_REFINER else ["text_encoder"])
    )
    for name, (tower, hf) in zip(names, texts, strict=True):
        with_proj = name == "text_encoder_2"
        cls = "CLIPTextModelWithProjection" if with_proj else "CLIPTextModel"
        sd = {k: v for k, v in hf.items() if with_proj or k != "text_projection.weight"}
        conf = clip_text_config_json(
            tower.width, tower.layers, hidden_act=tower.hidden_act, projection=tower.projection, cls=cls
        )
        _save_component(root / name, "model.safetensors", sd, conf)
        index[name] = ["transformers", cls]
        index[name.replace("text_encoder", "tokenizer")] = ["transformers", "CLIPTokenizer"]
    for missing in {"text_encoder", "text_encoder_2"} - set(names):
        index[missing] = [None, None]

    sched = root / "scheduler"
    sched.mkdir(exist_ok=True)
    prediction = "v_prediction" if family is ModelFamily.SD2_V else "epsilon"
    (sched / "scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "EulerDiscreteScheduler",
                "prediction_type": prediction,
                "num_train_timesteps": 1000,
            }
        )
    )
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


# ---- full-size SD1.5 for benchmarks ------------------------------------------------------------------


def sd15_shapes() -> dict[str, tuple[int, ...]]:
    """All keys and shapes of an SD1.5 single-file checkpoint (UNet, VAE, CLIP ViT-L)."""
    shapes = {UNET_PREFIX + k: v for k, v in unet_shapes(UNetConfig.sd15()).items()}
    shapes.update({VAE_PREFIX + k: v for k, v in vae_shapes(VAEConfig.sd()).items()})
    text = clip_text_shapes(768, 12)
    shapes.update({SD1_CLIP_PREFIX + k[len("text_model.") :]: v for k, v in text.items()})
    return shapes


def _stream_safetensors(
    path: Path, entries: Iterable[tuple[str, tuple[int, ...], torch.dtype]], tensors: Iterator[torch.Tensor]
) -> None:
    """Write a safetensors file whose header is known up front, one tensor at a time."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    order: list[tuple[str, int]] = []
    for name, shape, dt in entries:
        nbytes = math.prod(shape) * torch.empty((), dtype=dt).element_size()
        header[name] = {
            "dtype": _ST_CODES[dt],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        order.append((name, nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the spec recommends 8-byte alignment of the data section
    tmp = path.with_suffix(path.suffix + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (name, nbytes), t in zip(order, tensors, strict=True):
            data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if len(data) != nbytes:
                raise RuntimeError(f"{name}: wrote {len(data)} bytes, header says {nbytes}")
            f.write(data)
    os.replace(tmp, path)


def write_full_size_sd15(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float16, seed: int = 0
) -> Path:
    """Stream a full-size SD1.5-architecture checkpoint with random weights to ``path`` (.safetensors)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    shapes = sd15_shapes()
    names = sorted(shapes)
    g = torch.Generator().manual_seed(seed)
    entries = [(n, shapes[n], dtype) for n in names]

    def gen() -> Iterator[torch.Tensor]:
        for n in names:
            yield _random_tensor(n, shapes[n], g).to(dtype)

    _stream_safetensors(p, entries, gen())
    return p
