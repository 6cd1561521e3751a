"""SD3 / SD3.5 and FLUX.1 nodes (ComfyUI's names, inputs and defaults: comfy_extras/nodes_sd3.py,
nodes_flux.py, nodes_model_advanced.py, nodes_slg.py).

The flow models travel on the ordinary sockets (MODEL, CLIP, VAE), so these nodes only add what is
family-specific: 16-channel empty latents, per-encoder prompts, the Flux guidance value in the conditioning
("guidance", read by the Flux model; None disables the guidance embedding), model-sampling shifts, and
skip-layer guidance.
"""

from __future__ import annotations

from typing import Any

import torch

from engine import api
from engine.api import sampling

from ._image_ops import common_upscale
from .controlnet import controlnet_apply_advanced

PROMPT = {"dynamicPrompts": True}


def _flow_clip(clip: Any, node: str) -> Any:
    if clip is None:
        raise ValueError(f"{node}: clip input is None; connect the text encoders (e.g. DualCLIPLoader)")
    if not hasattr(clip, "encode_sd3"):
        raise ValueError(
            f"{node} needs SD3 or FLUX.1 text encoders (TripleCLIPLoader, DualCLIPLoader type sd3/flux, or an "
            f"SD3/Flux checkpoint); this CLIP is {getattr(clip, 'family', type(clip).__name__)}"
        )
    return clip


def _messages(cond: Any, messages: list[str]) -> Any:
    return api.NodeOutput(cond, ui={"text": messages}) if messages else (cond,)


@api.node(
    "EmptySD3LatentImage",
    category="latent/sd3",
    inputs=[
        api.Int("width", 1024, min=16, max=api.MAX_RESOLUTION, step=16),
        api.Int("height", 1024, min=16, max=api.MAX_RESOLUTION, step=16),
        api.Int("batch_size", 1, min=1, max=4096, step=None),
    ],
    outputs=[api.LATENT],
)
def empty_sd3_latent_image(width: int, height: int, batch_size: int = 1):
    """All-zero 16-channel latents at 1/8 of the image size (SD3, SD3.5 and FLUX.1)."""
    return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


@api.node(
    "CLIPTextEncodeSD3",
    category="advanced/conditioning",
    inputs=[
        api.Input("clip", api.CLIP),
        api.String("clip_l", None, multiline=True, extra=PROMPT),
        api.String("clip_g", None, multiline=True, extra=PROMPT),
        api.String("t5xxl", None, multiline=True, extra=PROMPT),
        api.Combo("empty_padding", ["none", "empty_prompt"]),
    ],
    outputs=[api.CONDITIONING],
)
def clip_text_encode_sd3(clip: Any, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str):
    """A prompt per SD3 text encoder; with empty_padding "none" an empty prompt leaves its encoder out."""
    messages: list[str] = []
    cond = _flow_clip(clip, "CLIPTextEncodeSD3").encode_sd3(
        clip_l, clip_g, t5xxl, empty_padding=empty_padding, warnings=messages
    )
    return _messages(cond, messages)


@api.node(
    "CLIPTextEncodeFlux",
    category="advanced/conditioning/flux",
    inputs=[
        api.Input("clip", api.CLIP),
        api.String("clip_l", None, multiline=True, extra=PROMPT),
        api.String("t5xxl", None, multiline=True, extra=PROMPT),
        api.Float("guidance", 3.5, min=0.0, max=100.0, step=0.1),
    ],
    outputs=[api.CONDITIONING],
)
def clip_text_encode_flux(clip: Any, clip_l: str, t5xxl: str, guidance: float):
    """CLIP-L's prompt (pooled vector) and T5's (context) for FLUX.1, with the guidance scale."""
    messages: list[str] = []
    cond = _flow_clip(clip, "CLIPTextEncodeFlux").encode_flux(
        clip_l, t5xxl, guidance=guidance, warnings=messages
    )
    return _messages(cond, messages)


def _set_values(conditioning: Any, **values: Any) -> list[list[Any]]:
    if not isinstance(conditioning, (list, tuple)):
        raise ValueError(f"conditioning must be a CONDITIONING list, got {type(conditioning).__name__}")
    return [[c[0], {**c[1], **values}] for c in conditioning]


@api.node(
    "FluxGuidance",
    category="advanced/conditioning/flux",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Float("guidance", 3.5, min=0.0, max=100.0, step=0.1),
    ],
    outputs=[api.CONDITIONING],
)
def flux_guidance(conditioning: Any, guidance: float):
    """Set the guidance scale a guidance-distilled FLUX.1 (dev) model embeds (its default is 3.5)."""
    return (_set_values(conditioning, guidance=guidance),)


@api.node(
    "FluxDisableGuidance",
    category="advanced/conditioning/flux",
    inputs=[api.Input("conditioning", api.CONDITIONING)],
    outputs=[api.CONDITIONING],
)
def flux_disable_guidance(conditioning: Any):
    """Turn the guidance embedding of Flux-like models off for these entries."""
    return (_set_values(conditioning, guidance=None),)


# ---- model sampling ---------------------------------------------------------------------------------


def _with_sampling(model: Any, sampling: Any) -> Any:
    m = model.clone()
    m.model_sampling = sampling
    # A ComfyUI pack's model_sampling object patch on the input would otherwise still be what it reads.
    getattr(m, "object_patches", {}).pop("model_sampling", None)
    return m


@api.node(
    "ModelSamplingSD3",
    category="advanced/model",
    display_name="ModelSamplingSD3",
    inputs=[api.Input("model", api.MODEL), api.Float("shift", 3.0, min=0.0, max=100.0, step=0.01)],
    outputs=[api.MODEL],
)
def model_sampling_sd3(model: Any, shift: float):
    """Flow-matching sampling with the SD3 time shift (timesteps scaled by 1000)."""
    return (_with_sampling(model, sampling.sd3_sampling(shift)),)


@api.node(
    "ModelSamplingAuraFlow",
    category="advanced/model",
    display_name="ModelSamplingAuraFlow",
    inputs=[api.Input("model", api.MODEL), api.Float("shift", 1.73, min=0.0, max=100.0, step=0.01)],
    outputs=[api.MODEL],
)
def model_sampling_auraflow(model: Any, shift: float):
    """Flow-matching sampling with a time shift and timesteps in 0..1 (AuraFlow; Flux schnell at 1.0)."""
    return (_with_sampling(model, sampling.auraflow_sampling(shift)),)


@api.node(
    "ModelSamplingFlux",
    category="advanced/model",
    display_name="ModelSamplingFlux",
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("max_shift", 1.15, min=0.0, max=100.0, step=0.01),
        api.Float("base_shift", 0.5, min=0.0, max=100.0, step=0.01),
        api.Int("width", 1024, min=16, max=api.MAX_RESOLUTION, step=8),
        api.Int("height", 1024, min=16, max=api.MAX_RESOLUTION, step=8),
    ],
    outputs=[api.MODEL],
)
def model_sampling_flux(model: Any, max_shift: float, base_shift: float, width: int, height: int):
    """FLUX.1's resolution-dependent shift: linear in the image-token count, base_shift at 256 tokens,
    max_shift at 4096 (1024x1024)."""
    ms = sampling.flux_sampling(width, height, base_shift=base_shift, max_shift=max_shift)
    return (_with_sampling(model, ms),)


# ---- skip-layer guidance -----------------------------------------------------------------------------


def _layers(name: str) -> api.Input:
    return api.String(name, "7, 8, 9", extra={"multiline": False})  # published explicitly, as ComfyUI


@api.node(
    "SkipLayerGuidanceDiT",
    category="advanced/guidance",
    experimental=True,
    inputs=[
        api.Input("model", api.MODEL),
        _layers("double_layers"),
        _layers("single_layers"),
        api.Float("scale", 3.0, min=0.0, max=10.0, step=0.1),
        api.Float("start_percent", 0.01, min=0.0, max=1.0, step=0.001),
        api.Float("end_percent", 0.15, min=0.0, max=1.0, step=0.001),
        api.Float("rescaling_scale", 0.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[api.MODEL],
)
def skip_layer_guidance_dit(
    model: Any,
    double_layers: str,
    single_layers: str,
    scale: float,
    start_percent: float,
    end_percent: float,
    rescaling_scale: float,
):
    """Guide away from a pass with the listed double / single transformer blocks skipped (SD3, Flux)."""
    m = sampling.skip_layer_guidance(
        model,
        double_layers=double_layers,
        single_layers=single_layers,
        scale=scale,
        start_percent=start_percent,
        end_percent=end_percent,
        rescaling_scale=rescaling_scale,
    )
    return (m,)


@api.node(
    "SkipLayerGuidanceSD3",
    category="advanced/guidance",
    experimental=True,
    inputs=[
        api.Input("model", api.MODEL),
        _layers("layers"),
        api.Float("scale", 3.0, min=0.0, max=10.0, step=0.1),
        api.Float("start_percent", 0.01, min=0.0, max=1.0, step=0.001),
        api.Float("end_percent", 0.15, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[api.MODEL],
)
def skip_layer_guidance_sd3(model: Any, layers: str, scale: float, start_percent: float, end_percent: float):
    """Skip-layer guidance over SD3's joint blocks (SkipLayerGuidanceDiT with only double layers)."""
    m = sampling.skip_layer_guidance(
        model,
        double_layers=layers,
        single_layers="",
        scale=scale,
        start_percent=start_percent,
        end_percent=end_percent,
    )
    return (m,)


@api.node(
    "ControlNetApplySD3",
    category="conditioning/controlnet",
    display_name="Apply Controlnet with VAE",
    deprecated=True,
    inputs=[
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("control_net", api.CONTROL_NET),
        api.Input("vae", api.VAE),
        api.Input("image", api.IMAGE),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
        api.Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
        api.Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[api.Output(api.CONDITIONING, "positive"), api.Output(api.CONDITIONING, "negative")],
)
def controlnet_apply_sd3(
    positive: Any,
    negative: Any,
    control_net: Any,
    vae: Any,
    image: Any,
    strength: float,
    start_percent: float,
    end_percent: float,
):
    """Apply a loaded ControlNet to both conditionings; SD3 ControlNets encode the control image with the
    VAE (the UNet ControlNets and T2I adapters take the image itself)."""
    return controlnet_apply_advanced(
        positive, negative, control_net, image, strength, start_percent, end_percent, vae=vae
    )


# ComfyUI's PREFERED_KONTEXT_RESOLUTIONS (nodes_flux.py): the (width, height) sizes Kontext was trained on.
KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024),
    (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip


@api.node(
    "FluxKontextImageScale",
    category="advanced/conditioning/flux",
    inputs=[api.Input("image", api.IMAGE)],
    outputs=[api.IMAGE],
    description="This node resizes the image to one that is more optimal for flux kontext.",
)
def flux_kontext_image_scale(image: Any):
    """Resize (lanczos, centre crop) to the Kontext training size whose aspect ratio is closest."""
    height, width = int(image.shape[1]), int(image.shape[2])
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
    samples = common_upscale(image.movedim(-1, 1), w, h, "lanczos", "center")
    return (samples.movedim(1, -1),)


@api.node(
    "FluxKontextMultiReferenceLatentMethod",
    category="advanced/conditioning/flux",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Combo("reference_latents_method", ["offset", "index", "uxo/uno"]),
    ],
    outputs=[api.CONDITIONING],
    experimental=True,
)
def flux_kontext_multi_reference_latent_method(conditioning: Any, reference_latents_method: str):
    """How FLUX Kontext places several reference latents in its position ids ("uxo/uno" is stored as "uxo",
    as ComfyUI does)."""
    method = (
        "uxo"
        if "uxo" in reference_latents_method or "uso" in reference_latents_method
        else reference_latents_method
    )
    return (_set_values(conditioning, reference_latents_method=method),)


NODES = [
    empty_sd3_latent_image,
    clip_text_encode_sd3,
    clip_text_encode_flux,
    flux_guidance,
    flux_disable_guidance,
    model_sampling_sd3,
    model_sampling_auraflow,
    model_sampling_flux,
    skip_layer_guidance_dit,
    skip_layer_guidance_sd3,
    controlnet_apply_sd3,
    flux_kontext_image_scale,
    flux_kontext_multi_reference_latent_method,
]
