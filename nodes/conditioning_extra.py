"""ComfyUI's further conditioning nodes, with its schemas: CLIPTextEncodeControlnet, SetUnionControlNetType,
ControlNetInpaintingAliMamaApply, InstructPixToPixConditioning, SD_4XUpscale_Conditioning,
and ReferenceLatent (unCLIPConditioning, CLIPVisionEncode, StyleModelApply and PhotoMakerEncode are in
vision_conditioning.py, GLIGENTextBoxApply in gligen.py).

The conditioning keys written here are ComfyUI's ("cross_attn_controlnet", "concat_latent_image",
"concat_image", "unclip_conditioning", "reference_latents"); docs/nodes.md says which of them diffgraph's samplers use.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from engine import api
from engine.api.models import require_vae

from ._image_ops import common_upscale
from .adapter_loaders import UnsupportedModelError, _unsupported
from .conditioning import _entries, _require_clip, _with_messages
from .controlnet import controlnet_apply_advanced

# The task numbers of ControlNet++ "union" models (ComfyUI's UNION_CONTROLNET_TYPES, in its order).
UNION_CONTROLNET_TYPES = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}


def _set_values(conditioning: Any, values: dict[str, Any], *, append: bool = False) -> list[list[Any]]:
    """Copies of the entries with `values` set; with `append`, list values are appended to a list the
    entry already holds under that key (ComfyUI's conditioning_set_values)."""
    out = _entries(conditioning)
    for _, opts in out:
        for key, value in values.items():
            old = opts.get(key)
            opts[key] = old + value if append and old is not None else value
    return out


@api.node(
    "CLIPTextEncodeControlnet",
    category="_for_testing/conditioning",
    inputs=[
        api.Input("clip", api.CLIP),
        api.Input("conditioning", api.CONDITIONING),
        api.String("text", None, multiline=True, extra={"dynamicPrompts": True}),
    ],
    outputs=[api.CONDITIONING],
    experimental=True,
)
def clip_text_encode_controlnet(clip: Any, conditioning: Any, text: str):
    """A separate prompt for the ControlNets of these entries: stored as "cross_attn_controlnet" (and
    "pooled_output_controlnet" where the encoder has a pooled vector), the entries' own prompt unchanged."""
    messages: list[str] = []
    encoded = _require_clip(clip).encode_conditioning(text, warnings=messages)
    cond, opts = encoded[0][0], encoded[0][1]
    values: dict[str, Any] = {"cross_attn_controlnet": cond}
    if opts.get("pooled_output") is not None:
        values["pooled_output_controlnet"] = opts["pooled_output"]
    return _with_messages((_set_values(conditioning, values),), messages)


@api.node(
    "SetUnionControlNetType",
    category="conditioning/controlnet",
    inputs=[
        api.Input("control_net", api.CONTROL_NET),
        api.Combo("type", ["auto", *UNION_CONTROLNET_TYPES]),
    ],
    outputs=[api.CONTROL_NET],
)
def set_union_controlnet_type(control_net: Any, type: str):  # noqa: A002 - ComfyUI's input name
    """A copy of the ControlNet whose `extra_args["control_type"]` is [the type's number] ([] for "auto"),
    as ComfyUI passes it to union ControlNets. diffgraph loads no union (ControlNet++) models yet, and the
    ControlNets it loads ignore the type, as ComfyUI's non-union ControlNets do."""
    number = UNION_CONTROLNET_TYPES.get(type, -1)
    new = copy.copy(control_net)
    new.extra_args = {
        **getattr(control_net, "extra_args", {}),
        "control_type": [number] if number >= 0 else [],
    }
    return (new,)


@api.node(
    "ControlNetInpaintingAliMamaApply",
    category="conditioning/controlnet",
    inputs=[
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("control_net", api.CONTROL_NET),
        api.Input("vae", api.VAE),
        api.Input("image", api.IMAGE),
        api.Input("mask", api.MASK),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
        api.Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
        api.Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[api.Output(api.CONDITIONING, "positive"), api.Output(api.CONDITIONING, "negative")],
)
def controlnet_inpainting_alimama_apply(
    positive: Any,
    negative: Any,
    control_net: Any,
    vae: Any,
    image: Any,
    mask: Any,
    strength: float,
    start_percent: float,
    end_percent: float,
):
    """ControlNetApplyAdvanced for inpainting ControlNets. Only ControlNets that take the mask as an extra
    input ("concat_mask": ComfyUI's SD3 / FLUX inpainting ControlNets) use `mask` and the masked image;
    diffgraph loads none of those yet (such a value is refused), and for the others ComfyUI ignores the
    mask too, so they get the image as it is."""
    if getattr(control_net, "concat_mask", False):
        raise _unsupported(
            "ControlNetInpaintingAliMamaApply", "inpainting ControlNets that take the mask as an extra input"
        )
    return controlnet_apply_advanced(
        positive, negative, control_net, image, strength, start_percent, end_percent, vae
    )


def _crop_to_multiple_of_8(pixels: torch.Tensor) -> torch.Tensor:
    # ComfyUI crops the image centred (the odd pixel on the far side) to a multiple of 8 before encoding.
    h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels
    y0, x0 = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    return pixels[:, y0 : y0 + h, x0 : x0 + w, :]


@api.node(
    "InstructPixToPixConditioning",
    category="conditioning/instructpix2pix",
    inputs=[
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("vae", api.VAE),
        api.Input("pixels", api.IMAGE),
    ],
    outputs=[
        api.Output(api.CONDITIONING, "positive"),
        api.Output(api.CONDITIONING, "negative"),
        api.Output(api.LATENT, "latent"),
    ],
)
def instruct_pix_to_pix_conditioning(positive: Any, negative: Any, vae: Any, pixels: Any):
    """The image's latent as "concat_latent_image" on both conditionings (the extra input channels of
    InstructPix2Pix models) and an all-zero latent of its size to sample from."""
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise ValueError(
            f"pixels must be an IMAGE (batch, height, width, channels), got {type(pixels).__name__}"
        )
    concat = require_vae(vae).encode(_crop_to_multiple_of_8(pixels))
    pos = _set_values(positive, {"concat_latent_image": concat})
    neg = _set_values(negative, {"concat_latent_image": concat})
    return (pos, neg, {"samples": torch.zeros_like(concat)})


@api.node(
    "SD_4XUpscale_Conditioning",
    category="conditioning/upscale_diffusion",
    inputs=[
        api.Input("images", api.IMAGE),
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Float("scale_ratio", 4.0, min=0.0, max=10.0, step=0.01),
        api.Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[
        api.Output(api.CONDITIONING, "positive"),
        api.Output(api.CONDITIONING, "negative"),
        api.Output(api.LATENT, "latent"),
    ],
)
def sd_4x_upscale_conditioning(
    images: Any, positive: Any, negative: Any, scale_ratio: float, noise_augmentation: float
):
    """For the SD x4 upscaler: the images in -1..1, resized (bilinear, centre crop) to a quarter of the
    target size, as "concat_image" with "noise_augmentation" on both conditionings, and an empty
    4-channel latent of that quarter size, which the x4 upscaler's VAE decodes at the target size
    (docs/unet_variants.md). Other models ignore these keys, as ComfyUI's do."""
    width = max(1, round(images.shape[2] * scale_ratio))
    height = max(1, round(images.shape[1] * scale_ratio))
    pixels = common_upscale(images.movedim(-1, 1) * 2.0 - 1.0, width // 4, height // 4, "bilinear", "center")
    values = {"concat_image": pixels, "noise_augmentation": noise_augmentation}
    latent = torch.zeros((images.shape[0], 4, height // 4, width // 4))
    return (_set_values(positive, values), _set_values(negative, values), {"samples": latent})


@api.node(
    "ReferenceLatent",
    category="advanced/conditioning/edit_models",
    inputs=[api.Input("conditioning", api.CONDITIONING), api.Input("latent", api.LATENT, optional=True)],
    outputs=[api.CONDITIONING],
)
def reference_latent(conditioning: Any, latent: Any = None):
    """Appends the latent's samples to the entries' "reference_latents" list (the guiding images of edit
    models such as FLUX Kontext, whose model reads them). No latent: unchanged."""
    if latent is None:
        return (conditioning,)
    return (_set_values(conditioning, {"reference_latents": [latent["samples"]]}, append=True),)


__all__ = ["UNION_CONTROLNET_TYPES", "UnsupportedModelError"]

NODES = [
    clip_text_encode_controlnet,
    set_union_controlnet_type,
    controlnet_inpainting_alimama_apply,
    instruct_pix_to_pix_conditioning,
    sd_4x_upscale_conditioning,
    reference_latent,
]
