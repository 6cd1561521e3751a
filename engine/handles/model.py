"""The MODEL socket value: a UNet behind a ModelPatcher plus what sampling needs to use it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from engine.diffusion import compiling
from engine.diffusion.models import latent_formats
from engine.diffusion.models import sdxl_conditioning as sdxl
from engine.diffusion.models.latent_formats import LatentFormat
from engine.diffusion.sampling.diffusion_model import AdmBuilder, DiffusionModel
from engine.diffusion.sampling.model_sampling import ModelSampling
from engine.diffusion.sampling.preview import latent_to_rgb
from engine.diffusion.sampling.unet_variants import concat_variant
from engine.diffusion.vision.unclip import revision_pooled
from engine.handles.base import ManagedHandle
from engine.handles.comfy_surface.extension import (
    ComfyPatcherExtensionsMixin,
    ComfyPatcherLifecycleMixin,
)
from engine.handles.comfy_surface.patcher import ComfyModelPatcherMixin
from engine.memory.manager import ModelManager
from engine.memory.patcher import ModelPatcher

# Latent -> RGB preview factors per family (engine.diffusion.sampling.preview knows sd1/sd2/sdxl).
_PREVIEW_FAMILY = {"sd1": "sd1", "sd2": "sd2", "sd2_v": "sd2", "sdxl": "sdxl", "sdxl_refiner": "sdxl"}


def _size_and_crop(cond: Mapping[str, Any], width: int, height: int) -> dict[str, Any]:
    # CLIPTextEncodeSDXL's keys; the latent's pixel size when they are absent, as ComfyUI does.
    return {
        "width": cond.get("width", width),
        "height": cond.get("height", height),
        "crop_w": cond.get("crop_w", 0),
        "crop_h": cond.get("crop_h", 0),
    }


def _pooled(cond: Mapping[str, Any]) -> torch.Tensor | None:
    revision = revision_pooled(cond)
    return revision if revision is not None else cond.get("pooled_output")


def sdxl_adm_builder(cond: Mapping[str, Any], width: int, height: int) -> torch.Tensor | None:
    """SDXL base ADM vector from a CONDITIONING entry's options (an unCLIP image embedding replaces the
    pooled text: ComfyUI's "revision")."""
    pooled = _pooled(cond)
    if pooled is None:
        return None
    target = {
        "target_width": cond.get("target_width", width),
        "target_height": cond.get("target_height", height),
    }
    return sdxl.sdxl_adm(pooled, **_size_and_crop(cond, width, height), **target)


def sdxl_refiner_adm_builder(cond: Mapping[str, Any], width: int, height: int) -> torch.Tensor | None:
    """SDXL refiner ADM vector; the aesthetic score defaults to 6 (ComfyUI's positive-prompt default)."""
    pooled = _pooled(cond)
    if pooled is None:
        return None
    score = cond.get("aesthetic_score", 6.0)
    return sdxl.sdxl_refiner_adm(pooled, **_size_and_crop(cond, width, height), aesthetic_score=score)


def adm_builder_for(family: str) -> AdmBuilder | None:
    if family == "sdxl":
        return sdxl_adm_builder
    if family == "sdxl_refiner":
        return sdxl_refiner_adm_builder
    return None


class ModelHandle(
    ComfyModelPatcherMixin, ComfyPatcherExtensionsMixin, ComfyPatcherLifecycleMixin, ManagedHandle
):
    """A diffusion model as it travels on a MODEL socket.

    `patcher` wraps the UNet (registered with `manager`); `model_options` holds per-clone options in
    ComfyUI's layout (`"transformer_options"` with the UNet patches, the guidance hooks...) that sampling
    hands to the UNet and the guidance. `clone()` shares the UNet weights and copies the patch list and
    options, so LoRA-style nodes can modify a clone without touching the original. ComfyUI's ModelPatcher
    methods (set_model_attn2_replace, add_object_patch, `.model`...) come from ComfyModelPatcherMixin.
    """

    def __init__(
        self,
        patcher: ModelPatcher,
        *,
        manager: ModelManager,
        model_sampling: ModelSampling,
        family: str,
        inpaint_concat: bool = False,
        latent_channels: int = 4,
        vae_downscale: int = 8,
        name: str = "model",
        model_options: dict[str, Any] | None = None,
        variant: str = "",
    ) -> None:
        super().__init__(patcher, manager=manager, name=name)
        # The UNet variant ("ip2p", "depth", "x4_upscaler"...: checkpoints.detect_variant); its extra inputs.
        self.variant = variant
        self.model_sampling = model_sampling
        self.family = family
        self.adm_builder: AdmBuilder | None = adm_builder_for(family)
        self.inpaint_concat = inpaint_concat
        self.latent_channels = latent_channels
        # Pixels per latent pixel of the VAE this model was trained with (8 for every real SD family).
        self.vae_downscale = vae_downscale
        self.model_options: dict[str, Any] = model_options if model_options is not None else {}
        self.model_options.setdefault("transformer_options", {})
        self._init_comfy_state()
        self._init_extensions()

    # ---- identity and variants -------------------------------------------------------------
    @property
    def unet(self) -> torch.nn.Module:
        return self.patcher.module

    def clone(self) -> ModelHandle:
        c = super().clone()
        c._clone_comfy_state(self)
        c._clone_extensions(self)
        return c

    @property
    def transformer_options(self) -> dict[str, Any]:
        return self.model_options.setdefault("transformer_options", {})

    @property
    def latent_format(self) -> LatentFormat:
        """How LATENT values (raw VAE latents) map into this model's space: the family's scale and shift."""
        if getattr(self, "variant", "") == "x4_upscaler":
            return latent_formats.SD_X4
        return latent_formats.for_family(str(self.family))

    # ---- use --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.manager.compute_device

    def diffusion_model(self) -> DiffusionModel:
        """The denoiser wrapper the samplers call (valid while the model is in use)."""
        return DiffusionModel(
            compiling.network_for(self, self.unet),  # the compiled twin under --compile/TorchCompileModel
            self.model_sampling,
            adm_builder=self.adm_builder,
            inpaint_concat=self.inpaint_concat,
            latent_channels=self.latent_channels,
            base_model=self.model,
            latent_format=self.latent_format,
            variant=concat_variant(getattr(self, "variant", "")),
        )

    # ---- previews -----------------------------------------------------------------------------
    def preview_image(self, x0: torch.Tensor, max_side: int = 512) -> Any:
        """A small RGB PIL image of the first latent of `x0` through the family's linear latent→RGB map."""
        from PIL import Image

        family = _PREVIEW_FAMILY.get(self.family, "sd1")
        rgb = latent_to_rgb(x0[:1].detach().to("cpu", torch.float32), family)[0]
        arr = (rgb * 255.0).round().to(torch.uint8).numpy()
        image = Image.fromarray(arr, "RGB")
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side))
        return image

    def __repr__(self) -> str:
        return f"ModelHandle({self.name!r}, family={self.family}, patches={len(self.patcher.patches)})"
