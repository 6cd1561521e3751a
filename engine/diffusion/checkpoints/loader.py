"""Build UNet, VAE and text encoders from checkpoint files.

Models are constructed on the ``meta`` device (no memory, no random initialisation) and the file's
tensors are then *assigned* as parameters (``load_state_dict(assign=True)``), so the peak memory of
a load is the size of the weights in the target dtype (see ``io.py`` for how they are read).

Missing VAE: a checkpoint without ``first_stage_model.*`` keys still loads (UNet and text encoder are
usable); ``LoadedCheckpoint.vae`` is then ``None`` and ``require_vae()`` raises an error that names
the file and points to VAELoader, the same behaviour users know from ComfyUI.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.diffusion.models.unet import UNetModel
from engine.diffusion.models.vae import AutoencoderKL
from engine.diffusion.text.encoder import SDTextEncoder, TowerSpec

from . import clip_text as ct
from . import diffusers_layout as dl
from .detect import detect_checkpoint
from .detect_text import normalize_legacy_keys
from .detect_vae import vae_config_for_file
from .flow_detect import vae16_format
from .io import CheckpointError, read_metadata, read_state_dict
from .spec import (
    SD1_CLIP_PREFIX,
    SD2_OPENCLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SGM_OPENCLIP0_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointSpec,
    ModelFamily,
    TextEncoderSpec,
)

ALL_COMPONENTS = ("unet", "vae", "text")
# Per-component dtype ("unet" / "vae" / "text" -> dtype) so each part of a checkpoint is read straight
# into the dtype of its role (e.g. a bf16 UNet beside an fp32 VAE), one cast per tensor.
ComponentDtypes = Mapping[str, torch.dtype]


@dataclass
class LoadedCheckpoint:
    spec: CheckpointSpec
    unet: Any  # UNetModel | None
    vae: Any  # AutoencoderKL | None
    text_encoder: Any  # SDTextEncoder | None

    def require_vae(self) -> Any:
        if self.vae is None:
            raise CheckpointError(
                self.spec.filename,
                "this checkpoint has no VAE (no 'first_stage_model.*' weights) or it was not loaded; "
                "load a VAE file with VAELoader and connect it instead",
            )
        return self.vae

    def require_text_encoder(self) -> Any:
        if self.text_encoder is None:
            raise CheckpointError(
                self.spec.filename,
                "this checkpoint has no text-encoder weights or they were not loaded; use CLIPLoader",
            )
        return self.text_encoder


# ---- assigning weights into meta-built models ---------------------------------------------------


def _list(keys: Iterable[str], limit: int = 8) -> str:
    ks = sorted(keys)
    more = f" ... (+{len(ks) - limit} more)" if len(ks) > limit else ""
    return ", ".join(ks[:limit]) + more


def _dominant_float_dtype(sd: Mapping[str, torch.Tensor]) -> torch.dtype:
    counts = Counter(v.dtype for v in sd.values() if v.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def assign_weights(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    path: str,
    what: str,
    prefix: str = "",
) -> nn.Module:
    """Strictly load ``sd`` into a meta-device ``model`` by assignment, casting to ``dtype`` where needed."""
    expected = model.state_dict()
    missing = expected.keys() - sd.keys()
    unexpected = sd.keys() - expected.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_list(prefix + k for k in missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_list(prefix + k for k in unexpected)}")
        raise CheckpointError(
            path,
            f"the {what} weights do not match the architecture inferred from the file ({'; '.join(parts)}). "
            "The file is damaged or uses a layout this loader does not know",
        )
    weights: dict[str, torch.Tensor] = {}
    for k, ref in expected.items():
        v = sd[k]
        if tuple(v.shape) != tuple(ref.shape):
            # 1x1 conv weights stored as linear matrices (and vice versa) hold the same numbers.
            if v.numel() == ref.numel() and [s for s in v.shape if s != 1] == [
                s for s in ref.shape if s != 1
            ]:
                v = v.reshape(ref.shape)
            else:
                raise CheckpointError(
                    path,
                    f"{what}: {prefix}{k} has shape {tuple(v.shape)}, the model expects {tuple(ref.shape)}",
                )
        if v.is_floating_point() and v.dtype != dtype:
            v = v.to(dtype)
        weights[k] = v
    model.load_state_dict(weights, strict=True, assign=True)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointError(path, f"{what}: tensors left uninitialised after loading: {_list(leftovers)}")
    model.requires_grad_(False)
    model.eval()
    return model


def build_unet(config: Any, sd: Mapping[str, torch.Tensor], *, dtype: torch.dtype, path: str) -> nn.Module:
    model = UNetModel(config, dtype=dtype, device="meta")
    return assign_weights(model, sd, dtype=dtype, path=path, what="UNet", prefix=UNET_PREFIX)


def build_vae(
    config: Any, sd: Mapping[str, torch.Tensor], *, dtype: torch.dtype, path: str, prefix: str = ""
) -> nn.Module:
    model = AutoencoderKL(config, dtype=dtype, device="meta")
    return assign_weights(model, sd, dtype=dtype, path=path, what="VAE", prefix=prefix)


def _text_tower(
    sd: Mapping[str, torch.Tensor], enc: TextEncoderSpec, *, dtype: torch.dtype, path: str
) -> nn.Module:
    body = dl.strip_prefix(sd, enc.prefix)
    try:
        if enc.layout == "hf":
            hf = {"text_model." + k: v for k, v in body.items()}
            return ct.build_clip_text_model(hf, dtype=dtype)
        return ct.build_openclip_text_model(body, dtype=dtype)
    except ValueError as e:
        raise CheckpointError(path, f"text encoder {enc.kind} under '{enc.prefix}': {e}") from None


def build_text_encoder(
    sd: Mapping[str, torch.Tensor],
    spec: CheckpointSpec,
    *,
    dtype: torch.dtype,
    sd2_last_layer_dropped: bool = False,
) -> Any:
    """The family's ``SDTextEncoder``. ``sd2_last_layer_dropped``: the OpenCLIP-H tower lacks its last
    layer (diffusers exports), so SD2's penultimate-layer conditioning is this tower's last layer."""
    towers = [_text_tower(sd, e, dtype=dtype, path=spec.filename) for e in spec.text_encoders]
    if spec.family is ModelFamily.SD1:
        return SDTextEncoder.for_sd1(towers[0])
    if spec.family in (ModelFamily.SD2, ModelFamily.SD2_V):
        if sd2_last_layer_dropped:
            # pad 0 and final layer norm as SD2 (see engine.diffusion.text.encoder), last remaining layer.
            return SDTextEncoder("sd2", {"clip_h": towers[0]}, [TowerSpec("clip_h", 0, -1, True, False)])
        return SDTextEncoder.for_sd2(towers[0])
    if spec.family is ModelFamily.SDXL:
        return SDTextEncoder.for_sdxl(towers[0], towers[1])
    return SDTextEncoder.for_sdxl_refiner(towers[0])


# ---- public entry points ------------------------------------------------------------------------


def _check_components(components: Iterable[str]) -> set[str]:
    comps = set(components)
    bad = comps - set(ALL_COMPONENTS)
    if bad:
        raise ValueError(f"components must be a subset of {ALL_COMPONENTS}, got {sorted(bad)}")
    return comps


def _assemble(
    sd: dict[str, torch.Tensor],
    spec: CheckpointSpec,
    *,
    dtype: torch.dtype | None,
    components: set[str],
    sd2_last_layer_dropped: bool = False,
    dtypes: ComponentDtypes | None = None,
) -> LoadedCheckpoint:
    path = spec.filename
    unet = vae = text = None

    def dtype_of(component: str, part: Mapping[str, torch.Tensor]) -> torch.dtype:
        return (dtypes or {}).get(component) or dtype or _dominant_float_dtype(part)

    if "unet" in components:
        unet_sd = dl.strip_prefix(sd, UNET_PREFIX)
        unet = build_unet(spec.unet_config, unet_sd, dtype=dtype_of("unet", unet_sd), path=path)
        del unet_sd
    if "vae" in components and "vae" in spec.components:
        vae_sd = dl.strip_prefix(sd, spec.vae_prefix)
        vae = build_vae(
            spec.vae_config, vae_sd, dtype=dtype_of("vae", vae_sd), path=path, prefix=spec.vae_prefix
        )
    if "text" in components and "text" in spec.components:
        text_sd = {k: v for k, v in sd.items() if any(k.startswith(e.prefix) for e in spec.text_encoders)}
        text = build_text_encoder(
            text_sd,
            spec,
            dtype=dtype_of("text", text_sd),
            sd2_last_layer_dropped=sd2_last_layer_dropped,
        )
    return LoadedCheckpoint(spec, unet, vae, text)


def _component_of(key: str) -> str | None:
    """Which component a single-file key belongs to ("unet" / "vae" / "text"), None for other keys."""
    if key.startswith(UNET_PREFIX):
        return "unet"
    if key.startswith(VAE_PREFIX):
        return "vae"
    if key.startswith(("cond_stage_model.", "conditioner.")):
        return "text"
    return None


def _key_filter(components: set[str]) -> Any:
    if components == set(ALL_COMPONENTS):
        return None

    def keep(k: str) -> bool:
        component = _component_of(k)
        return component is None or component in components

    return keep


def _read_dtypes(dtype: torch.dtype | None, dtypes: ComponentDtypes | None) -> Any:
    """What ``read_state_dict`` gets as ``dtype``: the single dtype, or a per-key function."""
    if not dtypes:
        return dtype
    return lambda key: dtypes.get(_component_of(key) or "", dtype)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    prediction_type: str | None = None,
    components: Iterable[str] = ALL_COMPONENTS,
    dtypes: ComponentDtypes | None = None,
) -> LoadedCheckpoint:
    """Load a single-file SD1/SD2/SDXL checkpoint (``.safetensors`` or weights-only ``.ckpt``).

    ``dtype``: the dtype of all floating-point weights (None keeps the file's); ``dtypes`` overrides it
    per component (``{"unet": torch.bfloat16, "vae": torch.float32, "text": torch.float32}``), each
    tensor being read straight into its component's dtype. ``prediction_type``
    overrides the detected ``"eps"``/``"v"``. ``components`` limits what is built; a component
    missing from the file gives ``None`` plus a note in ``spec.notes``. The UNet is always read, since
    detection needs it.
    """
    comps = _check_components(components)
    p = Path(path)
    if p.is_dir():
        return load_diffusers_folder(
            p, dtype=dtype, prediction_type=prediction_type, components=comps, dtypes=dtypes
        )
    # Text-encoder keys are always read: detection needs them to tell the families apart.
    sd = read_state_dict(
        p, dtype=_read_dtypes(dtype, dtypes), keys_filter=_key_filter(comps | {"unet", "text"})
    )
    sd = normalize_legacy_keys(sd)
    spec = detect_checkpoint(sd, filename=p, prediction_type=prediction_type, metadata=read_metadata(p))
    if "vae" not in comps and "vae" not in spec.components:
        # The VAE keys were filtered out on purpose: do not report them as missing.
        spec = replace(spec, notes=tuple(n for n in spec.notes if "no VAE weights" not in n))
    return _assemble(sd, spec, dtype=dtype, components=comps, dtypes=dtypes)


def _strip_vae_prefix(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    for prefix in (VAE_PREFIX, "vae.", "first_stage_model.model."):
        if any(k.startswith(prefix) for k in sd):
            return dl.strip_prefix(sd, prefix), prefix
    return sd, ""


def load_vae(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
) -> nn.Module:
    """Load a standalone VAE file: original layout (with or without ``first_stage_model.``) or diffusers.

    The latent scale factor is not stored in VAE weights; without ``scaling_factor`` it is 0.13025
    when the file name mentions SDXL ("xl") and 0.18215 otherwise. A 16-channel VAE (SD3, Flux: no
    quant convs) gets the Flux factors when the file is ``ae.*`` or its name mentions "flux", else SD3's
    (see ``flow_detect.vae16_format``); ``shift_factor`` overrides the shift.
    """
    p = Path(path)
    sd = read_state_dict(p, dtype=dtype)
    if any(".lora_down." in k or ".lora_A." in k or k.startswith("lora_") for k in sd):
        raise CheckpointError(p, "this is a LoRA, not a VAE: put it in models/loras and use LoraLoader")
    sd, prefix = _strip_vae_prefix(sd)
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}  # training-only discriminator weights
    if dl.is_diffusers_vae(sd):
        try:
            sd = dl.vae_diffusers_to_original(sd)
        except ValueError as e:
            raise CheckpointError(p, f"diffusers-layout VAE could not be converted: {e}") from None
    if "encoder.conv_in.weight" not in sd or "decoder.conv_out.weight" not in sd:
        raise CheckpointError(
            p,
            "not a VAE: 'encoder.conv_in.weight'/'decoder.conv_out.weight' are missing "
            f"(keys start with: {_list({'.'.join(k.split('.')[:2]) for k in sd}, 6)})",
        )
    shift = 0.0
    if sd["decoder.conv_in.weight"].shape[1] == 16:
        fmt = vae16_format(p.name)
        scaling_factor = fmt.scale_factor if scaling_factor is None else scaling_factor
        shift = fmt.shift_factor
    if scaling_factor is None:
        scaling_factor = 0.13025 if "xl" in p.name.lower() else 0.18215
    config = vae_config_for_file(sd, scaling_factor, p, shift if shift_factor is None else shift_factor)
    return build_vae(config, sd, dtype=dtype or _dominant_float_dtype(sd), path=str(p), prefix=prefix)


# ---- diffusers folders --------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"invalid JSON: {e}") from None


def _component_file(folder: Path) -> Path | None:
    for name in (
        "diffusion_pytorch_model.safetensors",
        "model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
        "pytorch_model.bin",
    ):
        if (folder / name).is_file():
            return folder / name
    return None


def diffusers_folder_to_single_file(
    root: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    components: Iterable[str] = ALL_COMPONENTS,
    dtypes: ComponentDtypes | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a diffusers model folder into one state dict in the original single-file layout.

    Returns the state dict and metadata hints for detection (the scheduler's prediction type).
    SD1 vs SD2 is told apart by the text encoder's activation (OpenAI CLIP uses ``quick_gelu``,
    OpenCLIP ``gelu``) and, failing that, its width (768 = CLIP ViT-L).
    """
    r = Path(root)
    comps = set(components) | {"unet"}
    if not (r / "unet").is_dir():
        raise CheckpointError(
            r,
            "not a diffusers model folder: it has no unet/ subfolder (expected model_index.json, unet/, vae/, text_encoder/)",
        )
    sd: dict[str, torch.Tensor] = {}

    def read(sub: str) -> dict[str, torch.Tensor] | None:
        f = _component_file(r / sub)
        component = "text" if sub.startswith("text_encoder") else sub
        return read_state_dict(f, dtype=(dtypes or {}).get(component, dtype)) if f is not None else None

    unet = read("unet")
    if unet is None:
        raise CheckpointError(r / "unet", "no weights file (diffusion_pytorch_model.safetensors) in unet/")
    try:
        sd.update(dl.add_prefix(dl.unet_diffusers_to_original(unet), UNET_PREFIX))
        del unet
        if "vae" in comps and (vae := read("vae")) is not None:
            sd.update(dl.add_prefix(dl.vae_diffusers_to_original(vae), VAE_PREFIX))
            del vae
    except ValueError as e:
        raise CheckpointError(r, str(e)) from None

    te1 = read("text_encoder")
    te2 = read("text_encoder_2")
    if te1 is not None and te2 is not None:
        sd.update(dl.add_prefix(dl.strip_prefix(te1, "text_model."), SDXL_CLIP_L_PREFIX))
        sd.update(dl.add_prefix(ct.hf_to_openclip(te2), SDXL_CLIP_G_PREFIX))
    elif te2 is not None:
        sd.update(dl.add_prefix(ct.hf_to_openclip(te2), SGM_OPENCLIP0_PREFIX))
    elif te1 is not None:
        conf = _read_json(r / "text_encoder" / "config.json")
        width = int(te1["text_model.embeddings.token_embedding.weight"].shape[1])
        act = conf.get("hidden_act")
        is_openai = act == "quick_gelu" if act else width == 768
        if is_openai:
            sd.update(dl.add_prefix(dl.strip_prefix(te1, "text_model."), SD1_CLIP_PREFIX))
        else:
            sd.update(dl.add_prefix(ct.hf_to_openclip(te1), SD2_OPENCLIP_PREFIX))
    sched = _read_json(r / "scheduler" / "scheduler_config.json")
    hints = {"prediction_type": str(sched["prediction_type"])} if "prediction_type" in sched else {}
    return sd, hints


def load_diffusers_folder(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    prediction_type: str | None = None,
    components: Iterable[str] = ALL_COMPONENTS,
    dtypes: ComponentDtypes | None = None,
) -> LoadedCheckpoint:
    """Load a diffusers model folder (``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``).

    The folder's weights are mapped to the single-file layout (``diffusers_layout``) and then go
    through the same detection and model building as single files. The tokenizer/ folder is not
    read: every SD family uses the CLIP BPE vocabulary that ``engine.diffusion.text`` ships.

    Note: diffusers' SD2 exports drop the last of OpenCLIP-H's 24 layers (SD2 conditions on the
    penultimate one). A 1024-wide, 23-layer SD2 text encoder is therefore used up to its *last*
    layer, which is the original penultimate one; ``clip_skip`` counts from there.
    """
    comps = _check_components(components)
    r = Path(path)
    sd, hints = diffusers_folder_to_single_file(r, dtype=dtype, components=comps, dtypes=dtypes)
    spec = detect_checkpoint(sd, filename=r, prediction_type=prediction_type, metadata=hints)
    dropped = (
        spec.family in (ModelFamily.SD2, ModelFamily.SD2_V)
        and bool(spec.text_encoders)
        and spec.text_encoders[0].layers == 23
        and spec.text_encoders[0].width == 1024
    )
    if dropped:
        note = (
            "diffusers SD2 text encoder has 23 of OpenCLIP-H's 24 layers; its last layer is SD2's penultimate"
        )
        spec = replace(spec, notes=spec.notes + (note,))
    return _assemble(sd, spec, dtype=dtype, components=comps, sd2_last_layer_dropped=dropped, dtypes=dtypes)
