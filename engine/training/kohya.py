"""The trained adapters in kohya-ss sd-scripts' key layout, the one LoRA readers share.

Per adapted layer with kohya module name ``M`` (``lora_unet_`` + module path with ``.`` -> ``_``):
``M.lora_down.weight``, ``M.lora_up.weight`` and ``M.alpha`` (LoRA / LoCon), or ``M.hada_w1_a`` ...
``M.hada_w2_b`` and ``M.alpha`` (LyCORIS LoHa). SD1.x/SD2.x LoRAs are named after the diffusers UNet
(``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``) because sd-scripts trains
them on that model; SDXL ones after the SGM UNet (``lora_unet_input_blocks_4_1_...``), as sd-scripts
does. ComfyUI, A1111/Forge, diffusers' ``load_lora_weights`` and our own parser (engine.diffusion.lora)
read both.

Metadata follows sd-scripts' ``ss_*`` keys (strings, as safetensors stores them): network module,
dim (rank), alpha, steps, learning rate, optimizer, seed, base model name and a hash of its UNet weights.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from engine.diffusion.checkpoints.diffusers_layout import unet_original_to_diffusers

from .adapters import AdapterSet

KOHYA_PREFIX = "lora_unet_"
_SGM_FAMILIES = ("sdxl", "sdxl_refiner")


def diffusers_modules(unet: nn.Module) -> dict[str, str]:
    """Our module path -> diffusers' UNet2DConditionModel module path (empty for a non-LDM layout)."""
    keys = [k for k in unet.state_dict() if k.endswith(".weight")]
    try:
        by_diffusers = cast(dict[str, str], unet_original_to_diffusers(cast(Any, {k: k for k in keys})))
    except ValueError:
        return {}
    return {
        str(okey)[: -len(".weight")]: dkey[: -len(".weight")]
        for dkey, okey in by_diffusers.items()
        if dkey.endswith(".weight")
    }


def kohya_names(unet: nn.Module, family: str) -> dict[str, str]:
    """Our module path -> kohya module name for every Linear/Conv2d weight of `unet`."""
    keys = [k[: -len(".weight")] for k in unet.state_dict() if k.endswith(".weight")]
    names = {k: KOHYA_PREFIX + k.replace(".", "_") for k in keys}
    if family not in _SGM_FAMILIES:
        # SD1/SD2: diffusers spelling; a non-LDM layout keeps the SGM-style names, the only ones it has.
        names.update({o: KOHYA_PREFIX + d.replace(".", "_") for o, d in diffusers_modules(unet).items()})
    return names


def adapters_state_dict(
    adapters: AdapterSet, names: Mapping[str, str], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The adapters as a kohya state dict (detached CPU tensors in `dtype`, alpha in float32)."""
    sd: dict[str, torch.Tensor] = {}
    for module, adapter in adapters.adapters.items():
        name = names[module]
        for leaf, tensor in adapter.export().items():
            sd[f"{name}.{leaf}"] = tensor.detach().to("cpu", dtype).contiguous()
        sd[f"{name}.alpha"] = torch.tensor(adapter.alpha, dtype=torch.float32)
    return sd


def load_into(adapters: AdapterSet, names: Mapping[str, str], sd: Mapping[str, torch.Tensor]) -> int:
    """Continue training from a kohya file: adapters whose module the file has take its weights and
    alpha. Returns how many adapters were loaded."""
    loaded = 0
    for module, adapter in adapters.adapters.items():
        prefix = names[module] + "."
        tensors = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        try:
            adapter.load(tensors)
        except KeyError:
            continue  # the file does not adapt this layer (or adapts it with another algorithm)
        if "alpha" in tensors:
            adapter.alpha = float(tensors["alpha"].float().item())
        loaded += 1
    return loaded


def unet_weights_hash(unet: nn.Module) -> str:
    """sha256 of the UNet's weights in state-dict order (the base the LoRA was trained on)."""
    digest = hashlib.sha256()
    for key, tensor in unet.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def training_metadata(
    *,
    algorithm: str,
    rank: int,
    alpha: float,
    steps: int,
    learning_rate: float,
    optimizer: str,
    seed: int,
    base_model_name: str,
    base_model_hash: str,
    family: str,
    num_images: int,
) -> dict[str, str]:
    """sd-scripts' ``ss_*`` metadata of a training run (all values strings)."""
    lycoris = algorithm != "LoRA"
    meta = {
        "ss_network_module": "lycoris.kohya" if lycoris else "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_steps": str(steps),
        "ss_learning_rate": f"{learning_rate:g}",
        "ss_optimizer": optimizer,
        "ss_seed": str(seed),
        "ss_num_train_images": str(num_images),
        "ss_sd_model_name": base_model_name,
        "ss_sd_model_hash": base_model_hash[:10],
        "ss_base_model_version": {"sdxl": "sdxl_base_v1-0", "sd2": "sd_v2", "sd2_v": "sd_v2"}.get(
            family, "sd_v1"
        ),
        "ss_v2": str(family in ("sd2", "sd2_v")),
        "ss_training_comment": "trained with diffgraph TrainLoraNode",
        "diffgraph_base_unet_sha256": base_model_hash,
    }
    if lycoris:
        meta["ss_network_args"] = json.dumps({"algo": algorithm.lower()})
    return meta


def steps_of(path: Path, metadata: Mapping[str, str]) -> int:
    """Steps a LoRA file was already trained for: its ``ss_steps``, else ComfyUI's file name
    ``<name>_<steps>_steps_<counter>_.safetensors``, else 0."""
    value = metadata.get("ss_steps", "")
    if value.isdigit():
        return int(value)
    match = re.search(r"_(\d+)_steps_", path.name)
    return int(match.group(1)) if match else 0
