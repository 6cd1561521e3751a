"""``DiffusionModel``: a UNet plus its ``ModelSampling`` = a denoiser D(x, sigma) in VE form.

This module knows no model family: family-specific pieces (SDXL's ``y`` vector, inpainting's
concatenated channels) come in as arguments. The UNet follows the shared contract
``forward(x, timesteps, context=None, y=None, control=None, transformer_options=None)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from engine.diffusion.models.latent_formats import IDENTITY, LatentFormat
from engine.diffusion.models.wrappers import call_wrapped

from .model_sampling import ModelSampling

AdmBuilder = Callable[[Mapping[str, Any], int, int], torch.Tensor | None]


def _param_dtype_device(module: Any) -> tuple[torch.dtype | None, torch.device | None]:
    params = getattr(module, "parameters", None)
    if params is None:
        return None, None
    # A network storing its weights in another dtype than it computes in says so (UNetModel.compute_dtype).
    compute = getattr(module, "compute_dtype", None)
    for p in params():
        return compute or p.dtype, p.device
    return None, None


class DiffusionModel:
    """Wraps a UNet into a denoiser.

    ``adm_builder(cond_dict, width, height) -> y`` builds the class/ADM vector for models that take
    one (SDXL: ``sdxl_adm`` from the models package, fed from the CONDITIONING dict's
    "pooled_output", "width", "height", "crop_w", ...); width/height are in pixels.
    ``inpaint_concat``: the UNet has 4 extra input channels for inpainting (9-channel SD inpainting
    models): a mask channel and the masked image latent are concatenated after the noisy latent.
    ``latent_format``: how the raw VAE latents of LATENT values map into this model's space (the
    sampler applies it to the input latent and back to the result; see ``latent_formats``).
    """

    def __init__(
        self,
        unet: Any,
        model_sampling: ModelSampling,
        *,
        adm_builder: AdmBuilder | None = None,
        inpaint_concat: bool = False,
        latent_channels: int = 4,
        base_model: Any = None,
        latent_format: LatentFormat = IDENTITY,
        variant: Any = None,
    ) -> None:
        """``base_model``: what guidance hooks receive as ``args["model"]`` (the ComfyUI-shaped model
        object of the MODEL value; this wrapper itself when None). ``variant``: the extra inputs of an
        IP2P / depth / x4-upscaler UNet (a ``unet_variants.ConcatVariant``; None for the others)."""
        self.unet = unet
        self.model_sampling = model_sampling
        self.adm_builder = adm_builder
        self.inpaint_concat = inpaint_concat
        self.latent_channels = latent_channels
        self.base_model = base_model if base_model is not None else self
        self.latent_format = latent_format
        self.variant = variant
        # The sampler's noise seed, which ComfyUI hands to the conditioning code (unCLIP's noise); the
        # sampler sets it, and ADM builders see it as the entry's "seed".
        self.seed: int | None = None

    # ---- conditioning helpers ----------------------------------------------------------------
    def encode_adm(self, cond: Mapping[str, Any], width: int, height: int) -> torch.Tensor | None:
        """The UNet's ``y`` for one conditioning entry, or None when the model takes none."""
        if self.variant is not None:
            # The x4 upscaler's noise level; other variants keep the family's (SDXL InstructPix2Pix: SDXL's).
            label = self.variant.adm(cond)
            if label is not None:
                return label  # type: ignore[no-any-return]
        if self.adm_builder is None:
            return None
        if self.seed is not None and "seed" not in cond:
            cond = {**cond, "seed": self.seed}
        return self.adm_builder(cond, width, height)

    def concat_cond(
        self,
        like: torch.Tensor,
        *,
        latent_image: torch.Tensor | None,
        denoise_mask: torch.Tensor | None,
        cond: Mapping[str, Any] | None = None,
    ) -> torch.Tensor | None:
        """The extra input channels of an inpainting UNet: [mask (1 ch), masked latent (C ch)].

        Taken from the conditioning's "concat_mask"/"concat_latent_image" (set by
        InpaintModelConditioning-style nodes; a raw VAE latent, mapped into model space here as ComfyUI
        does) when present, else from the sampling mask and ``latent_image`` (the sampler's input
        latent, already in model space; VAEEncodeForInpaint greyed its masked pixels). Without any mask the
        whole image is to be painted: mask = 1 and the masked latent is blank (zeros; ComfyUI uses
        the latent of a grey image, a small difference for mask-less inpainting-model txt2img).
        """
        if self.variant is not None:
            opts = dict(cond or {})
            if getattr(self, "seed", None) is not None:
                opts.setdefault("seed", self.seed)  # the x4 upscaler's noise augmentation follows it
            return self.variant.concat(  # type: ignore[no-any-return]
                like, latent_image=latent_image, denoise_mask=denoise_mask, cond=opts
            )
        if not self.inpaint_concat:
            return None
        cond = cond or {}
        b, _, h, w = like.shape
        mask = cond.get("concat_mask", denoise_mask)
        image = cond.get("concat_latent_image")
        if image is not None:
            image = self.latent_format.process_in(torch.as_tensor(image))
        else:
            image = latent_image
        if mask is None:
            return torch.cat(
                [like.new_ones((b, 1, h, w)), like.new_zeros((b, self.latent_channels, h, w))], dim=1
            )
        mask = torch.as_tensor(mask).to(like.device, like.dtype)
        if mask.ndim == 4:
            mask = mask[:, :1]
        mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
        if tuple(mask.shape[-2:]) != (h, w):
            mask = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
        mask = _to_batch(mask.round(), b)
        if image is None:
            image = like.new_zeros((b, self.latent_channels, h, w))
        image = image.to(like.device, like.dtype)
        if tuple(image.shape[-2:]) != (h, w):
            image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False)
        return torch.cat([mask, _to_batch(image, b)], dim=1)

    # ---- the denoiser ----------------------------------------------------------------------
    def apply(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        *,
        context: torch.Tensor | None,
        y: torch.Tensor | None = None,
        c_concat: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """D(x, sigma): scale the input, convert sigma to the UNet's timestep, run the UNet in its
        own dtype/device and turn its eps/v/flow output into the x0 estimate (in x's dtype).
        "apply_model" wrappers in ``transformer_options`` run around it (ComfyUI's APPLY_MODEL
        wrappers, with ``apply_model``'s arguments and the model object as ``executor.class_obj``)."""
        if transformer_options and "wrappers" in transformer_options:
            args = (x, sigma, c_concat, context, control, transformer_options)
            return call_wrapped(  # type: ignore[no-any-return]
                "apply_model", transformer_options, self._apply_unwrapped, self.base_model, *args, y=y
            )
        return self._apply(x, sigma, context, y, c_concat, control, transformer_options)

    def _apply_unwrapped(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        c_concat: torch.Tensor | None = None,
        c_crossattn: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self._apply(x, sigma, c_crossattn, kwargs.get("y"), c_concat, control, transformer_options)

    def _apply(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor | None,
        y: torch.Tensor | None,
        c_concat: torch.Tensor | None,
        control: Any,
        transformer_options: dict[str, Any] | None,
    ) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        ms = self.model_sampling
        xin = ms.calculate_input(sigma, x)
        if c_concat is not None:
            xin = torch.cat([xin, c_concat.to(xin.device, xin.dtype)], dim=1)
        t = ms.model_timestep(sigma).float()
        dtype, device = _param_dtype_device(self.unet)
        dtype = dtype or x.dtype
        device = device or x.device
        out = self.unet(
            xin.to(device, dtype),
            t.to(device),
            context=None if context is None else context.to(device, dtype),
            # A network may ask for y in another dtype (the Flux adapter: float32, see flow_models).
            # Integer class labels (the x4 upscaler's noise level) stay integers.
            y=None
            if y is None
            else y.to(device, getattr(self.unet, "y_dtype", None) or dtype)
            if y.is_floating_point()
            else y.to(device),
            control=control,
            transformer_options=transformer_options if transformer_options is not None else {},
        )
        return ms.calculate_denoised(sigma, out.to(x.device, x.dtype), x)

    def apply_model(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: torch.Tensor | None = None,
        c_crossattn: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``apply`` under ComfyUI's ``BaseModel.apply_model`` signature: ``t`` is sigma, the conditioning
        comes as the keys of the ``c`` dict unet wrappers receive (``c_crossattn``, ``c_concat``, ``y``,
        ``control``, ``transformer_options``); returns the x0 estimate."""
        return self.apply(
            x,
            t,
            context=c_crossattn,
            y=kwargs.get("y"),
            c_concat=c_concat,
            control=control,
            transformer_options=transformer_options,
        )


def _to_batch(t: torch.Tensor, b: int) -> torch.Tensor:
    """Repeat or truncate a batch to size b (ComfyUI's resize_to_batch_size for whole multiples)."""
    if t.shape[0] == b:
        return t
    if t.shape[0] > b:
        return t[:b]
    reps = -(-b // t.shape[0])
    return t.repeat((reps,) + (1,) * (t.ndim - 1))[:b]
