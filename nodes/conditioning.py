"""Text encoding and CONDITIONING manipulation nodes (ComfyUI's names, inputs and defaults).

CONDITIONING is a list of `[tensor (B, tokens, dim), {options}]` pairs (DESIGN.md §1). Nodes never modify
their inputs: every node returns new lists with copied option dicts. The options written here ("area",
"strength", "mask", "start_percent", ...) are the ones the guided denoiser understands
(engine.diffusion.sampling.guidance).
"""

from __future__ import annotations

from typing import Any

import torch

from engine import api

from ._image_ops import checked_mask


def _entries(conditioning: Any, name: str = "conditioning") -> list[list[Any]]:
    if not isinstance(conditioning, (list, tuple)):
        raise ValueError(f"{name} must be a CONDITIONING list, got {type(conditioning).__name__}")
    return [[c[0], dict(c[1])] for c in conditioning]


def _with_options(conditioning: Any, **options: Any) -> list[list[Any]]:
    out = _entries(conditioning)
    for entry in out:
        entry[1].update(options)
    return out


def _require_clip(clip: Any) -> Any:
    if clip is None:
        raise ValueError(
            "clip input is None: the checkpoint has no text encoder; load one with CLIPLoader and connect it"
        )
    return clip


def _with_messages(values: tuple[Any, ...], messages: list[str]) -> Any:
    # Embedding references the encoder skipped (missing, refused, wrong family) are shown in the node's
    # UI output, as LoraLoader shows the keys it did not load.
    return api.NodeOutput(*values, ui={"text": messages}) if messages else values


@api.node(
    "CLIPTextEncode",
    category="conditioning",
    display_name="CLIP Text Encode (Prompt)",
    inputs=[
        api.String(
            "text", None, multiline=True, extra={"dynamicPrompts": True}, tooltip="The text to be encoded."
        ),
        api.Input("clip", api.CLIP, tooltip="The CLIP model used for encoding the text."),
    ],
    outputs=[api.Output(api.CONDITIONING, tooltip="The encoded text, to guide the diffusion model.")],
)
def clip_text_encode(text: str, clip: Any):
    """Encode a prompt (with (weights:1.2) and embedding:name syntax) into a CONDITIONING."""
    messages: list[str] = []
    cond = _require_clip(clip).encode_conditioning(text, warnings=messages)
    return _with_messages((cond,), messages)


@api.node(
    "CLIPSetLastLayer",
    category="conditioning",
    inputs=[
        api.Input("clip", api.CLIP),
        api.Int("stop_at_clip_layer", -1, min=-24, max=-1, step=1),
    ],
    outputs=[api.CLIP],
)
def clip_set_last_layer(clip: Any, stop_at_clip_layer: int):
    """Use the output of an earlier text-encoder layer ("clip skip"): -1 = last, -2 = penultimate."""
    return (_require_clip(clip).with_last_layer(stop_at_clip_layer),)


@api.node(
    "ConditioningCombine",
    category="conditioning",
    display_name="Conditioning (Combine)",
    inputs=[api.Input("conditioning_1", api.CONDITIONING), api.Input("conditioning_2", api.CONDITIONING)],
    outputs=[api.CONDITIONING],
)
def conditioning_combine(conditioning_1: Any, conditioning_2: Any):
    """Both lists: each entry is evaluated separately and the predictions are averaged."""
    return (_entries(conditioning_1) + _entries(conditioning_2),)


@api.node(
    "ConditioningConcat",
    category="conditioning",
    inputs=[api.Input("conditioning_to", api.CONDITIONING), api.Input("conditioning_from", api.CONDITIONING)],
    outputs=[api.CONDITIONING],
)
def conditioning_concat(conditioning_to: Any, conditioning_from: Any):
    """Append the tokens of the first entry of conditioning_from to every entry of conditioning_to."""
    src = _entries(conditioning_from, "conditioning_from")
    if not src:
        raise ValueError("conditioning_from is empty")
    cond_from = src[0][0]
    out = []
    for cond, opts in _entries(conditioning_to, "conditioning_to"):
        if cond.shape[-1] != cond_from.shape[-1]:
            raise ValueError(
                f"cannot concatenate conditionings of widths {cond.shape[-1]} and {cond_from.shape[-1]}; "
                "they come from different model families"
            )
        out.append([torch.cat([cond, cond_from.to(cond.dtype).expand(cond.shape[0], -1, -1)], dim=1), opts])
    return (out,)


@api.node(
    "ConditioningAverage",
    category="conditioning",
    inputs=[
        api.Input("conditioning_to", api.CONDITIONING),
        api.Input("conditioning_from", api.CONDITIONING),
        api.Float("conditioning_to_strength", 1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[api.CONDITIONING],
)
def conditioning_average(conditioning_to: Any, conditioning_from: Any, conditioning_to_strength: float):
    """Blend every entry of conditioning_to with the first entry of conditioning_from:
    to·s + from·(1 − s), tokens padded with zeros / cut to the length of conditioning_to; pooled alike."""
    src = _entries(conditioning_from, "conditioning_from")
    if not src:
        raise ValueError("conditioning_from is empty")
    cond_from, opts_from = src[0]
    pooled_from = opts_from.get("pooled_output")
    s = float(conditioning_to_strength)
    out = []
    for cond, opts in _entries(conditioning_to, "conditioning_to"):
        f = cond_from[:, : cond.shape[1]].to(cond.dtype)
        if f.shape[1] < cond.shape[1]:
            pad = torch.zeros((f.shape[0], cond.shape[1] - f.shape[1], f.shape[2]), dtype=f.dtype)
            f = torch.cat([f, pad], dim=1)
        new = cond * s + f * (1.0 - s)
        pooled = opts.get("pooled_output")
        if pooled is not None and pooled_from is not None:
            opts["pooled_output"] = pooled * s + pooled_from.to(pooled.dtype) * (1.0 - s)
        elif pooled_from is not None:
            opts["pooled_output"] = pooled_from
        out.append([new, opts])
    return (out,)


@api.node(
    "ConditioningSetArea",
    category="conditioning",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Int("width", 64, min=64, max=api.MAX_RESOLUTION, step=8),
        api.Int("height", 64, min=64, max=api.MAX_RESOLUTION, step=8),
        api.Int("x", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Int("y", 0, min=0, max=api.MAX_RESOLUTION, step=8),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[api.CONDITIONING],
)
def conditioning_set_area(conditioning: Any, width: int, height: int, x: int, y: int, strength: float):
    """Restrict the conditioning to a rectangle given in pixels (stored in latent pixels, pixels // 8)."""
    area = (height // 8, width // 8, y // 8, x // 8)
    return (_with_options(conditioning, area=area, strength=strength, set_area_to_bounds=False),)


@api.node(
    "ConditioningSetAreaPercentage",
    category="conditioning",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Float("width", 1.0, min=0.0, max=1.0, step=0.01),
        api.Float("height", 1.0, min=0.0, max=1.0, step=0.01),
        api.Float("x", 0.0, min=0.0, max=1.0, step=0.01),
        api.Float("y", 0.0, min=0.0, max=1.0, step=0.01),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[api.CONDITIONING],
)
def conditioning_set_area_percentage(
    conditioning: Any, width: float, height: float, x: float, y: float, strength: float
):
    """Restrict the conditioning to a rectangle given as fractions of the image."""
    area = ("percentage", height, width, y, x)
    return (_with_options(conditioning, area=area, strength=strength, set_area_to_bounds=False),)


@api.node(
    "ConditioningSetAreaStrength",
    category="conditioning",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[api.CONDITIONING],
)
def conditioning_set_area_strength(conditioning: Any, strength: float):
    return (_with_options(conditioning, strength=strength),)


@api.node(
    "ConditioningSetMask",
    category="conditioning",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Input("mask", api.MASK),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
        api.Combo("set_cond_area", ["default", "mask bounds"]),
    ],
    outputs=[api.CONDITIONING],
)
def conditioning_set_mask(conditioning: Any, mask: torch.Tensor, strength: float, set_cond_area: str):
    """Weight the conditioning by a MASK (any resolution, resized to the latent); "mask bounds" also
    evaluates the model only on the mask's bounding box."""
    return (
        _with_options(
            conditioning,
            mask=checked_mask(mask),
            set_area_to_bounds=set_cond_area != "default",
            mask_strength=strength,
        ),
    )


@api.node(
    "ConditioningSetTimestepRange",
    category="advanced/conditioning",
    inputs=[
        api.Input("conditioning", api.CONDITIONING),
        api.Float("start", 0.0, min=0.0, max=1.0, step=0.001),
        api.Float("end", 1.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[api.CONDITIONING],
)
def conditioning_set_timestep_range(conditioning: Any, start: float, end: float):
    """Use the conditioning only for the part of the schedule between start and end (0 = first step)."""
    return (_with_options(conditioning, start_percent=start, end_percent=end),)


@api.node(
    "ConditioningZeroOut",
    category="advanced/conditioning",
    inputs=[api.Input("conditioning", api.CONDITIONING)],
    outputs=[api.CONDITIONING],
)
def conditioning_zero_out(conditioning: Any):
    """Zeros in place of the tokens and the pooled vector (a "null" prompt for models that expect one)."""
    out = []
    for cond, opts in _entries(conditioning):
        if isinstance(opts.get("pooled_output"), torch.Tensor):
            opts["pooled_output"] = torch.zeros_like(opts["pooled_output"])
        out.append([torch.zeros_like(cond), opts])
    return (out,)


@api.node(
    "CLIPTextEncodeSDXL",
    category="advanced/conditioning",
    inputs=[
        api.Input("clip", api.CLIP),
        api.Int("width", 1024, min=0, max=api.MAX_RESOLUTION, step=None),
        api.Int("height", 1024, min=0, max=api.MAX_RESOLUTION, step=None),
        api.Int("crop_w", 0, min=0, max=api.MAX_RESOLUTION, step=None),
        api.Int("crop_h", 0, min=0, max=api.MAX_RESOLUTION, step=None),
        api.Int("target_width", 1024, min=0, max=api.MAX_RESOLUTION, step=None),
        api.Int("target_height", 1024, min=0, max=api.MAX_RESOLUTION, step=None),
        api.String("text_g", None, multiline=True, extra={"dynamicPrompts": True}),
        api.String("text_l", None, multiline=True, extra={"dynamicPrompts": True}),
    ],
    outputs=[api.CONDITIONING],
)
def clip_text_encode_sdxl(
    clip: Any,
    width: int,
    height: int,
    crop_w: int,
    crop_h: int,
    target_width: int,
    target_height: int,
    text_g: str,
    text_l: str,
):
    """SDXL prompt with separate CLIP-G / CLIP-L texts and the size/crop micro-conditioning."""
    messages: list[str] = []
    cond, pooled = _require_clip(clip).encode_dual(text_g, text_l, warnings=messages)
    opts: dict[str, Any] = {
        "width": width,
        "height": height,
        "crop_w": crop_w,
        "crop_h": crop_h,
        "target_width": target_width,
        "target_height": target_height,
    }
    if pooled is not None:
        opts["pooled_output"] = pooled
    return _with_messages(([[cond, opts]],), messages)


@api.node(
    "CLIPTextEncodeSDXLRefiner",
    category="advanced/conditioning",
    inputs=[
        api.Float("ascore", 6.0, min=0.0, max=1000.0, step=0.01),
        api.Int("width", 1024, min=0, max=api.MAX_RESOLUTION, step=None),
        api.Int("height", 1024, min=0, max=api.MAX_RESOLUTION, step=None),
        api.String("text", None, multiline=True, extra={"dynamicPrompts": True}),
        api.Input("clip", api.CLIP),
    ],
    outputs=[api.CONDITIONING],
)
def clip_text_encode_sdxl_refiner(ascore: float, width: int, height: int, text: str, clip: Any):
    """SDXL refiner prompt with the aesthetic-score micro-conditioning."""
    messages: list[str] = []
    clip = _require_clip(clip)
    cond = clip.encode_conditioning(
        text, warnings=messages, aesthetic_score=ascore, width=width, height=height
    )
    return _with_messages((cond,), messages)


NODES = [
    clip_text_encode,
    clip_set_last_layer,
    conditioning_combine,
    conditioning_concat,
    conditioning_average,
    conditioning_set_area,
    conditioning_set_area_percentage,
    conditioning_set_area_strength,
    conditioning_set_mask,
    conditioning_set_timestep_range,
    conditioning_zero_out,
    clip_text_encode_sdxl,
    clip_text_encode_sdxl_refiner,
]
