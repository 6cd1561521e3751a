"""State dicts of MODEL / CLIP / VAE handles in the layouts ComfyUI writes, for the saving nodes.

Weights are taken with each clone's patches applied (a merge or LoRA is baked in), in the dtype they are
stored in. Key layouts are the original single-file ones that ComfyUI's `save_checkpoint` writes and every
loader reads (engine/diffusion/checkpoints/spec.py has the prefixes):

- UNet: `model.diffusion_model.<LDM key>`; VAE: `first_stage_model.<LDM key>` (bare LDM keys in a VAE file);
- text encoders: SD1 `cond_stage_model.transformer.text_model.*`; SD2 OpenCLIP under `cond_stage_model.model.`;
  SDXL CLIP-L under `conditioner.embedders.0.transformer.text_model.*` and OpenCLIP bigG under
  `conditioner.embedders.1.model.`; the SDXL refiner's bigG under `conditioner.embedders.0.model.`. The CLIP-L
  towers carry the `position_ids` buffer, as the original SD1 and SDXL files do.
- a text encoder file of its own (CLIPSave): one file per tower in Hugging Face layout (`text_model.*`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from engine.diffusion.checkpoints.clip_text import hf_to_openclip
from engine.diffusion.checkpoints.spec import (
    SD1_CLIP_PREFIX,
    SD2_OPENCLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SGM_OPENCLIP0_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from engine.handles.base import ManagedHandle

CLIP_POSITIONS = 77
_POSITION_IDS = "embeddings.position_ids"

# Where each family's towers go in a checkpoint: tower name -> (prefix, layout).
_CHECKPOINT_TOWERS: dict[str, dict[str, tuple[str, str]]] = {
    "sd1": {"clip_l": (SD1_CLIP_PREFIX, "hf")},
    "sd2": {"clip_h": (SD2_OPENCLIP_PREFIX, "openclip")},
    "sdxl": {"clip_l": (SDXL_CLIP_L_PREFIX, "hf"), "clip_g": (SDXL_CLIP_G_PREFIX, "openclip")},
    "sdxl_refiner": {"clip_g": (SGM_OPENCLIP0_PREFIX, "openclip")},
}

# Model families whose single-file layout this module writes (SD2's v-prediction variant is "sd2_v").
SAVABLE_FAMILIES = frozenset({*_CHECKPOINT_TOWERS, "sd2_v"})

# ComfyUI's modelspec architecture names (comfy_extras/nodes_model_merging.save_checkpoint); it writes
# the modelspec block only for these families and the prediction key for all.
_MODELSPEC_ARCHITECTURE = {
    "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl_refiner": "stable-diffusion-xl-v1-refiner",
}


class SaveError(ValueError):
    """A handle that cannot be written in a layout other programs read (the message says why)."""


def patched_state_dict(handle: ManagedHandle) -> dict[str, torch.Tensor]:
    """The module's tensors with this clone's patches applied, on the CPU, contiguous, stored dtype."""
    out: dict[str, torch.Tensor] = {}
    with handle.use() as module:
        for key, value in module.state_dict().items():
            tensor = value.detach()
            # Tensors on the compute device, and patched ones, are copied: the module's own are restored
            # to their originals (in place on the device) when the patches are removed.
            copy = tensor.device.type != "cpu" or key in handle.patcher.patches
            out[key] = tensor.to("cpu", copy=copy).contiguous()
    return out


def _hf_tower(tower_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Towers are CLIPTextModel(WithProjection) (names under text_model.) or a bare CLIPTextTransformer.
    out = {}
    for key, value in tower_sd.items():
        name = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        out[name] = value
    return out


def clip_towers(clip: ManagedHandle) -> dict[str, dict[str, torch.Tensor]]:
    """Tower name ("clip_l", "clip_h", "clip_g") -> its weights in Hugging Face CLIPTextModel layout."""
    towers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in patched_state_dict(clip).items():
        if not key.startswith("towers."):
            continue
        name, _, rest = key[len("towers.") :].partition(".")
        towers.setdefault(name, {})[rest] = value
    return {name: _hf_tower(sd) for name, sd in towers.items()}


def _position_ids() -> torch.Tensor:
    return torch.arange(CLIP_POSITIONS, dtype=torch.int64).unsqueeze(0)


def clip_checkpoint_state_dict(clip: Any) -> dict[str, torch.Tensor]:
    """The text encoder(s) under the family's single-file prefixes."""
    family = str(clip.family)
    layout = _CHECKPOINT_TOWERS.get(family)
    if layout is None:
        raise SaveError(
            f"saving a {family!r} text encoder into a checkpoint is not supported; "
            "only SD1, SD2 and SDXL checkpoints can be saved"
        )
    out: dict[str, torch.Tensor] = {}
    towers = clip_towers(clip)
    for name, (prefix, kind) in layout.items():
        hf = towers[name]
        if kind == "hf":
            body = {k[len("text_model.") :]: v for k, v in hf.items() if k.startswith("text_model.")}
            body[_POSITION_IDS] = _position_ids()
        else:
            body = hf_to_openclip(hf)
        out.update({prefix + k: v for k, v in body.items()})
    return out


def clip_file_state_dicts(clip: ManagedHandle) -> dict[str, dict[str, torch.Tensor]]:
    """CLIPSave's files: tower name -> its weights in Hugging Face layout (what CLIPLoader reads)."""
    return clip_towers(clip)


def unet_checkpoint_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The UNet under `model.diffusion_model.`, plus ComfyUI's `v_pred` marker for v-prediction."""
    out = {UNET_PREFIX + k: v for k, v in patched_state_dict(model).items()}
    if prediction_of(model) == "v":
        out["v_pred"] = torch.tensor([])
    return out


def vae_state_dict(vae: ManagedHandle, prefix: str = "") -> dict[str, torch.Tensor]:
    """The VAE in the LDM layout: bare keys for a VAE file, `first_stage_model.` in a checkpoint."""
    return {prefix + k: v for k, v in patched_state_dict(vae).items()}


def checkpoint_state_dict(model: Any, clip: Any | None, vae: ManagedHandle | None) -> dict[str, torch.Tensor]:
    """A whole single-file checkpoint (ComfyUI's CheckpointSave layout)."""
    family = str(model.family)
    if family not in SAVABLE_FAMILIES:
        raise SaveError(f"saving a {family!r} model as a checkpoint is not supported; only SD1, SD2 and SDXL")
    out = unet_checkpoint_state_dict(model)
    if clip is not None:
        out.update(clip_checkpoint_state_dict(clip))
    if vae is not None:
        out.update(vae_state_dict(vae, VAE_PREFIX))
    return out


def prediction_of(model: Any) -> str:
    return str(getattr(model.model_sampling, "prediction", "eps"))


def checkpoint_metadata(model: Any, title: str) -> dict[str, str]:
    """ComfyUI's safetensors metadata for a saved model: the modelspec block (SDXL families, `title` is
    "<filename> <counter>") and the prediction key (`epsilon` / `v`)."""
    metadata: dict[str, str] = {}
    architecture = _MODELSPEC_ARCHITECTURE.get(str(model.family))
    if architecture is not None:
        metadata["modelspec.architecture"] = architecture
        metadata["modelspec.sai_model_spec"] = "1.0.0"
        metadata["modelspec.implementation"] = "sgm"
        metadata["modelspec.title"] = title
    prediction = prediction_of(model)
    if prediction == "eps":
        metadata["modelspec.predict_key"] = "epsilon"
    elif prediction == "v":
        metadata["modelspec.predict_key"] = "v"
    return metadata


def save_safetensors(path: Any, sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> None:
    """Write `sd` as a .safetensors file (tensors contiguous, as the format requires)."""
    from safetensors.torch import save_file

    tensors = {k: v if v.is_contiguous() else v.contiguous() for k, v in sd.items()}
    save_file(tensors, str(path), metadata=dict(metadata) if metadata is not None else None)
