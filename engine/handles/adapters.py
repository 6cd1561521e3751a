"""Adapter values and operations for the nodes: LoRA on MODEL/CLIP handles, CONTROL_NET, UPSCALE_MODEL,
and the torch preprocessors (nodes reach engine.diffusion only through engine.handles).

Written by the adapters work (issue 9) as a separate module of this package; it only uses the public
methods of ModelHandle / ClipHandle (clone, add_patches, unet, patcher.module).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.diffusion import preprocess
from engine.diffusion.checkpoints.control import (
    build_controlnet,
    build_t2i_adapter,
    is_t2i_adapter,
    strip_controlnet_prefix,
)
from engine.diffusion.checkpoints.control_mmdit import build_mmdit_controlnet, is_mmdit_controlnet
from engine.diffusion.checkpoints.control_sd35 import build_sd35_controlnet, is_stability_sd35_controlnet
from engine.diffusion.checkpoints.io import read_state_dict
from engine.diffusion.checkpoints.upscalers import UpscalerSpec, load_upscaler_file
from engine.diffusion.lora import LoraLoad, load_lora_file, text_encoder_key_map, unet_key_map
from engine.diffusion.models.control_apply import ControlApplication
from engine.diffusion.models.control_apply_mmdit import MMDiTControlApplication, SD35ControlApplication
from engine.diffusion.models.controlnet import ControlNetModel
from engine.diffusion.models.mmdit_controlnet import MMDiTControlNet
from engine.diffusion.models.mmdit_controlnet_sd35 import SD35ControlNet
from engine.diffusion.models.t2i_adapter import T2IAdapter
from engine.diffusion.models.upscalers import upscale_tiled
from engine.handles.clip import ClipHandle
from engine.handles.model import ModelHandle

__all__ = [
    "ControlNetHandle",
    "UpscaleModelHandle",
    "apply_controlnet",
    "apply_lora",
    "load_controlnet",
    "load_upscale_model",
    "preprocess",
]


class AdapterFileError(ValueError):
    """A LoRA / ControlNet / upscaler file that cannot be used; the message names the file."""


# ---- LoRA -----------------------------------------------------------------------------------------


def apply_lora(
    path: str | os.PathLike[str],
    model: ModelHandle | None,
    clip: ClipHandle | None,
    strength_model: float,
    strength_clip: float,
) -> tuple[ModelHandle | None, ClipHandle | None, LoraLoad]:
    """Clones of `model`/`clip` with the LoRA's patches added (originals untouched), and the load report.
    A strength of 0 leaves that side as it is (ComfyUI does the same)."""
    targets: dict[str, dict[str, str]] = {}
    if model is not None:
        targets["unet"] = unet_key_map(model.unet.state_dict().keys())
    if clip is not None:
        targets["clip"] = text_encoder_key_map(clip.patcher.module.state_dict().keys())
    try:
        report = load_lora_file(path, targets)
    except (ValueError, OSError) as e:
        raise AdapterFileError(f"cannot read LoRA {os.fspath(path)}: {e}") from e
    new_model, new_clip = model, clip
    if model is not None and strength_model != 0:
        new_model = model.clone()
        new_model.add_patches(report.patches.get("unet", {}), strength_model)
    if clip is not None and strength_clip != 0:
        new_clip = clip.clone()
        new_clip.add_patches(report.patches.get("clip", {}), strength_clip)
    return new_model, new_clip, report


# ---- ControlNet / T2I-Adapter ------------------------------------------------------------------------


@dataclass
class ControlNetHandle:
    """The CONTROL_NET socket value: a ControlNet or T2I-Adapter module and where it came from."""

    module: ControlNetModel | T2IAdapter | MMDiTControlNet | SD35ControlNet
    name: str

    @property
    def kind(self) -> str:
        if isinstance(self.module, (MMDiTControlNet, SD35ControlNet)):
            return "sd3_controlnet"
        return "t2i_adapter" if isinstance(self.module, T2IAdapter) else "controlnet"


def load_controlnet(path: str | os.PathLike[str], model: ModelHandle | None = None) -> ControlNetHandle:
    """ControlNet (original single-file or diffusers layout) or T2I-Adapter, detected from the keys.

    With `model` (DiffControlNetLoader): files marked as differences (a "difference" key, ComfyUI's
    convention) get the model's UNet weights added to every ControlNet weight of the same name."""
    name = os.path.basename(os.fspath(path))
    try:
        sd = read_state_dict(path, dtype=torch.float32)
        if is_t2i_adapter(sd):
            return ControlNetHandle(build_t2i_adapter(sd), name)
        if is_stability_sd35_controlnet(sd):
            return ControlNetHandle(build_sd35_controlnet(sd, dtype=torch.float32), name)
        if is_mmdit_controlnet(sd):
            return ControlNetHandle(build_mmdit_controlnet(sd, dtype=torch.float32), name)
        if "difference" in sd:
            if model is None:
                raise ValueError(
                    "this is a difference ControlNet: load it with DiffControlNetLoader and a MODEL"
                )
            sd = strip_controlnet_prefix({k: v for k, v in sd.items() if k != "difference"})
            base = model.unet.state_dict()
            sd = {
                k: (v + base[k].float().cpu()) if k in base and base[k].shape == v.shape else v
                for k, v in sd.items()
            }
        return ControlNetHandle(build_controlnet(sd, dtype=torch.float32), name)
    except ValueError as e:
        raise AdapterFileError(f"{name}: {e}") from e


def apply_controlnet(
    conditioning: list[list[Any]],
    control: ControlNetHandle,
    image: torch.Tensor,
    strength: float,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    cache: dict[int, ControlApplication] | None = None,
    vae: Any = None,
) -> list[list[Any]]:
    """A copy of `conditioning` whose entries carry the control (chained onto any control already
    there). `image` is an IMAGE (B, H, W, C). Pass one `cache` for the positive and negative lists so
    that entries with the same previous control share one application (and one batched UNet call).
    `vae` (a VAE handle) encodes the control image of SD3 ControlNets."""
    hint = image.movedim(-1, 1).float()
    cache = cache if cache is not None else {}
    out = []
    for cond, opts in conditioning:
        prev = opts.get("control")
        key = id(prev)
        if key not in cache:
            settings: dict[str, Any] = {
                "strength": strength,
                "start_percent": start_percent,
                "end_percent": end_percent,
                "previous": prev,
            }
            if isinstance(control.module, (MMDiTControlNet, SD35ControlNet)):
                encode = None if vae is None else (lambda px: vae.encode(px.movedim(1, -1)))
                downscale = 8 if vae is None else vae.downscale
                kind = (
                    SD35ControlApplication
                    if isinstance(control.module, SD35ControlNet)
                    else MMDiTControlApplication
                )
                cache[key] = kind(control.module, hint, encode=encode, downscale=downscale, **settings)
            else:
                cache[key] = ControlApplication(control.module, hint, **settings)
        new_opts = dict(opts)
        new_opts["control"] = cache[key]
        out.append([cond, new_opts])
    return out


# ---- Upscale models ------------------------------------------------------------------------------------


@dataclass
class UpscaleModelHandle:
    """The UPSCALE_MODEL socket value."""

    module: torch.nn.Module
    spec: UpscalerSpec
    name: str

    @property
    def scale(self) -> int:
        return self.spec.scale


def load_upscale_model(path: str | os.PathLike[str]) -> UpscaleModelHandle:
    try:
        module, spec = load_upscaler_file(path)
    except (ValueError, OSError) as e:
        raise AdapterFileError(str(e)) from e
    return UpscaleModelHandle(module, spec, os.path.basename(os.fspath(path)))


def upscale_image(
    model: UpscaleModelHandle,
    image: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    tile: int = 512,
    overlap: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> IMAGE upscaled by the model's factor, tile by tile, clamped to 0..1."""
    module = model.module.to(device)
    x = image.movedim(-1, 1).float().to(device)
    with torch.no_grad():
        y = upscale_tiled(module, x, model.scale, tile=tile, overlap=overlap, progress=progress)
    module.to("cpu")
    return y.clamp(0.0, 1.0).movedim(1, -1).cpu()
