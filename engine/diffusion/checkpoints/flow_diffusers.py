"""SD3/SD3.5 and FLUX.1 diffusers folders: the transformer's diffusers keys mapped to the single-file
(ComfyUI) layout, and the folder read into one all-in-one state dict that ``flow_loader`` builds from.

Folder layout (``model_index.json``): ``transformer/`` (``diffusion_pytorch_model.safetensors``, or shards
listed by ``diffusion_pytorch_model.safetensors.index.json``), ``vae/`` (16-channel ``AutoencoderKL``),
``text_encoder/`` (CLIP-L), ``text_encoder_2/`` (CLIP-G for SD3, T5 for Flux), ``text_encoder_3/`` (T5, SD3),
``tokenizer_3/`` / ``tokenizer_2/`` (the T5 vocabulary, found by ``t5_tokenizer.find_t5_vocabulary``).

The key facts (ComfyUI's ``mmdit_to_diffusers`` / ``flux_to_diffusers``, read the other way round):
diffusers splits each fused ``qkv`` (and Flux's single-block ``linear1`` = q, k, v, MLP-in) into separate
linears, which are concatenated back along the output dimension here; the final adaLN (and SD3's last
pre-only context adaLN) stores (scale, shift) where ComfyUI's layout stores (shift, scale). Text encoders
are already in the transformers layout that the all-in-one files use; the VAE goes through the SD VAE
mapping of ``diffusers_layout``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from . import diffusers_layout as dl
from .flow_detect import TEXT_ENCODER_PREFIXES, detect_flow_file
from .flow_loader import FLOW_COMPONENTS, LoadedFlowCheckpoint, assemble_flow_checkpoint
from .io import CheckpointError, read_state_dict
from .loader import ComponentDtypes
from .spec import UNET_PREFIX, VAE_PREFIX

TRANSFORMER_FOLDER = "transformer"
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
_QKV = ("to_q", "to_k", "to_v")
_ADDED_QKV = ("add_q_proj", "add_k_proj", "add_v_proj")

# ours -> diffusers module outside the blocks (the final adaLN, swapped, is handled apart). These tables
# are also the LoRA key maps' (engine.diffusion.lora.keymap_flow reads them the other way round).
SD3_BASIC = {
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.linear": "proj_out",
}
SD3_BLOCK = {
    "context_block.adaLN_modulation.1": "norm1_context.linear",
    "context_block.attn.proj": "attn.to_add_out",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "x_block.attn2.proj": "attn2.to_out.0",
    "x_block.attn2.ln_q": "attn2.norm_q",
    "x_block.attn2.ln_k": "attn2.norm_k",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
}
FLUX_BASIC = {
    "final_layer.linear": "proj_out",
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
}
FLUX_DOUBLE = {
    "img_attn.proj": "attn.to_out.0",
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
# RMS norms: diffusers ``norm_q.weight``, ComfyUI's Flux ``query_norm.scale``.
_FLUX_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
FLUX_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
_FLUX_SINGLE_NORMS = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


class _Converter:
    """Collects our keys from a diffusers state dict and reports the diffusers keys left unused."""

    def __init__(self, sd: Mapping[str, torch.Tensor]) -> None:
        self.sd = sd
        self.out: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()

    def take(self, ours: str, theirs: str, *, swap: bool = False) -> None:
        if theirs in self.sd:
            self.used.add(theirs)
            self.out[ours] = _swap_halves(self.sd[theirs]) if swap else self.sd[theirs]

    def modules(self, table: Mapping[str, str], ours: str, theirs: str, *, swap: bool = False) -> None:
        """``weight`` and ``bias`` (RMS norms: ``weight``) of each (ours, diffusers) module pair."""
        for a, b in table.items():
            for end in ("weight", "bias"):
                self.take(f"{ours}{a}.{end}", f"{theirs}{b}.{end}", swap=swap)

    def fuse(self, ours: str, parts: Iterable[str]) -> None:
        """``ours`` (weight and bias) = the diffusers linears ``parts`` concatenated along the outputs."""
        names = list(parts)
        for end in ("weight", "bias"):
            keys = [f"{n}.{end}" for n in names]
            if all(k in self.sd for k in keys):
                self.used.update(keys)
                self.out[f"{ours}.{end}"] = torch.cat([self.sd[k] for k in keys], dim=0)

    def result(self, what: str) -> dict[str, torch.Tensor]:
        left = sorted(set(self.sd) - self.used)
        if left:
            shown = ", ".join(left[:8]) + (f" (+{len(left) - 8} more)" if len(left) > 8 else "")
            raise ValueError(f"diffusers {what} keys with no single-file equivalent: {shown}")
        return self.out


def _count(keys: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def sd3_diffusers_to_original(
    sd: Mapping[str, torch.Tensor], *, pre_only_last: bool = True
) -> dict[str, torch.Tensor]:
    """diffusers ``SD3Transformer2DModel`` keys -> MMDiT single-file keys (without ``model.diffusion_model.``).

    ``pre_only_last=False`` for ``SD3ControlNetModel``'s blocks, none of which is pre-only."""
    c = _Converter(sd)
    c.modules(SD3_BASIC, "", "")
    c.modules({"final_layer.adaLN_modulation.1": "norm_out.linear"}, "", "", swap=True)
    c.take("pos_embed", "pos_embed.pos_embed")
    depth = _count(sd, "transformer_blocks")
    for i in range(depth):
        ours, theirs = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        # The last block's context adaLN is diffusers' AdaLayerNormContinuous: (scale, shift).
        last = pre_only_last and i == depth - 1
        table = {k: v for k, v in SD3_BLOCK.items() if not (last and k == "context_block.adaLN_modulation.1")}
        c.modules(table, ours, theirs)
        if last:
            c.modules({"context_block.adaLN_modulation.1": "norm1_context.linear"}, ours, theirs, swap=True)
        c.fuse(ours + "x_block.attn.qkv", (f"{theirs}attn.{n}" for n in _QKV))
        c.fuse(ours + "context_block.attn.qkv", (f"{theirs}attn.{n}" for n in _ADDED_QKV))
        c.fuse(ours + "x_block.attn2.qkv", (f"{theirs}attn2.{n}" for n in _QKV))
    return c.result("SD3 transformer")


def flux_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``FluxTransformer2DModel`` keys -> FLUX.1 single-file keys."""
    c = _Converter(sd)
    c.modules(FLUX_BASIC, "", "")
    c.modules({"final_layer.adaLN_modulation.1": "norm_out.linear"}, "", "", swap=True)
    for i in range(_count(sd, "transformer_blocks")):
        ours, theirs = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        c.modules(FLUX_DOUBLE, ours, theirs)
        for a, b in _FLUX_DOUBLE_NORMS.items():
            c.take(ours + a, theirs + b)
        c.fuse(ours + "img_attn.qkv", (f"{theirs}attn.{n}" for n in _QKV))
        c.fuse(ours + "txt_attn.qkv", (f"{theirs}attn.{n}" for n in _ADDED_QKV))
    for i in range(_count(sd, "single_transformer_blocks")):
        ours, theirs = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        c.modules(FLUX_SINGLE, ours, theirs)
        for a, b in _FLUX_SINGLE_NORMS.items():
            c.take(ours + a, theirs + b)
        c.fuse(ours + "linear1", [*(f"{theirs}attn.{n}" for n in _QKV), theirs + "proj_mlp"])
    return c.result("FLUX transformer")


def is_flow_diffusers_folder(path: str | os.PathLike[str]) -> bool:
    """A diffusers folder of a transformer family (it has ``transformer/``, not ``unet/``)."""
    p = Path(path)
    return p.is_dir() and (p / TRANSFORMER_FOLDER).is_dir() and not (p / "unet").is_dir()


def _weight_files(folder: Path) -> list[Path]:
    """The component's weight file, or its shards from the ``*.safetensors.index.json`` beside them."""
    for stem in _WEIGHT_NAMES:
        for variant in ("", ".fp16", ".bf16"):
            single = folder / f"{stem}{variant}.safetensors"
            if single.is_file():
                return [single]
            index = folder / f"{stem}{variant}.safetensors.index.json"
            if index.is_file():
                try:
                    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                except (json.JSONDecodeError, KeyError, AttributeError) as e:
                    raise CheckpointError(index, f"invalid shard index: {e}") from None
                return [folder / s for s in shards]
    return []


def _read_part(root: Path, sub: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    files = _weight_files(root / sub)
    if not files:
        raise CheckpointError(
            root,
            f"diffusers folder is missing the {sub}/ subfolder or its weights "
            f"({sub}/diffusion_pytorch_model.safetensors or {sub}/model.safetensors)",
        )
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(read_state_dict(f, dtype=dtype))
    return sd


def _text_parts(family: str) -> dict[str, str]:
    """Text-encoder kind -> subfolder for the family (diffusers' pipeline layout)."""
    if family == "sd3":
        return {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"}
    return {"clip_l": "text_encoder", "t5xxl": "text_encoder_2"}


def flow_diffusers_folder_to_single_file(
    root: str | os.PathLike[str],
    *,
    components: Iterable[str] = FLOW_COMPONENTS,
    dtypes: ComponentDtypes | None = None,
) -> dict[str, torch.Tensor]:
    """Read an SD3/Flux diffusers folder into one state dict in the all-in-one single-file layout.

    Every part asked for must be there; a missing one is reported naming its subfolder."""
    r = Path(root)
    comps = set(components)
    dtypes = dtypes or {}
    transformer = _read_part(r, TRANSFORMER_FOLDER, dtypes.get("unet"))
    family = "flux" if any(k.startswith("single_transformer_blocks.") for k in transformer) else "sd3"
    try:
        convert = flux_diffusers_to_original if family == "flux" else sd3_diffusers_to_original
        sd = dl.add_prefix(convert(transformer), UNET_PREFIX)
        del transformer
        if "vae" in comps:
            vae = _read_part(r, "vae", dtypes.get("vae"))
            sd.update(dl.add_prefix(dl.vae_diffusers_to_original(vae), VAE_PREFIX))
    except ValueError as e:
        raise CheckpointError(r, str(e)) from None
    if "text" in comps:
        for kind, sub in _text_parts(family).items():
            part = _read_part(r, sub, dtypes.get("text"))
            if kind != "t5xxl" and "embeddings.token_embedding.weight" in part:
                # transformers 5 saves a bare CLIPTextModel without its ``text_model.`` prefix.
                part = dl.add_prefix(part, "text_model.")
            sd.update(dl.add_prefix(part, TEXT_ENCODER_PREFIXES[kind]))
    return sd


def load_flow_diffusers_folder(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    dtypes: ComponentDtypes | None = None,
    components: Iterable[str] = FLOW_COMPONENTS,
) -> LoadedFlowCheckpoint:
    """An SD3/SD3.5 or FLUX.1 diffusers folder as ``flow_loader.load_flow_checkpoint`` returns a file."""
    comps = set(components)
    per = {c: d for c in FLOW_COMPONENTS if (d := (dtypes or {}).get(c) or dtype) is not None}
    sd = flow_diffusers_folder_to_single_file(path, components=comps, dtypes=per)
    spec = detect_flow_file(sd, filename=path)
    return assemble_flow_checkpoint(sd, spec, components=comps, dtype=dtype, dtypes=dtypes, path=path)
