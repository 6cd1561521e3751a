"""Animated image files (ComfyUI's image/animation family): an IMAGE batch saved as the frames of one
animated WebP or PNG in the output folder, with the workflow embedded as ComfyUI embeds it.

WebP: the API graph in EXIF tag 0x0110 as "prompt:<json>", each extra_pnginfo entry ("workflow") in the
tags below 0x010F as "<key>:<json>". APNG: private `comf` chunks after the image data, "<key>\\0<json>".
"""

from __future__ import annotations

import json
from typing import Any

import torch
from PIL import Image, PngImagePlugin

from engine import api
from engine.api import images as imageio

CATEGORY = "image/animation"
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
HIDDEN = {"prompt": api.HIDDEN_PROMPT, "extra_pnginfo": api.HIDDEN_EXTRA_PNGINFO}
EXIF_PROMPT_TAG = 0x0110
EXIF_FIRST_EXTRA_TAG = 0x010F


def _frames(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(imageio.to_uint8(image.detach().cpu().float().numpy())) for image in images]


def _frame_ms(fps: float) -> int:
    return int(1000.0 / fps)


def _common_inputs() -> list[api.Input]:
    return [
        api.Input("images", api.IMAGE),
        api.String("filename_prefix", "ComfyUI"),
        api.Float("fps", 6.0, min=0.01, max=1000.0, step=0.01),
    ]


def _target(images: torch.Tensor, prefix: str, context: api.ExecutionContext) -> Any:
    return imageio.save_image_path(prefix, context.folders.output, int(images.shape[2]), int(images.shape[1]))


@api.node(
    "SaveAnimatedWEBP",
    category=CATEGORY,
    display_name="SaveAnimatedWEBP",
    inputs=[
        *_common_inputs(),
        api.Boolean("lossless", True),
        api.Int("quality", 80, min=0, max=100, step=None),
        api.Combo("method", list(WEBP_METHODS)),
    ],
    output_node=True,
    hidden=HIDDEN,
)
def save_animated_webp(
    images: torch.Tensor,
    filename_prefix: str,
    fps: float,
    lossless: bool,
    quality: int,
    method: str,
    context: api.ExecutionContext,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """All frames in one output/<prefix>_<counter>_.webp, shown frame by frame at `fps`."""
    frames = _frames(images)
    exif = frames[0].getexif()
    if prompt is not None:
        exif[EXIF_PROMPT_TAG] = f"prompt:{json.dumps(prompt)}"
    if isinstance(extra_pnginfo, dict):
        for offset, (key, value) in enumerate(extra_pnginfo.items()):
            exif[EXIF_FIRST_EXTRA_TAG - offset] = f"{key}:{json.dumps(value)}"
    target = _target(images, filename_prefix, context)
    name = f"{target.filename}_{target.counter:05}_.webp"
    frames[0].save(
        target.folder / name,
        save_all=True,
        append_images=frames[1:],
        duration=_frame_ms(fps),
        exif=exif,
        lossless=lossless,
        quality=quality,
        method=WEBP_METHODS.get(method, 4),
    )
    result = {"filename": name, "subfolder": target.subfolder, "type": "output"}
    return api.NodeOutput(ui={"images": [result], "animated": (len(frames) != 1,)})


@api.node(
    "SaveAnimatedPNG",
    category=CATEGORY,
    display_name="SaveAnimatedPNG",
    inputs=[*_common_inputs(), api.Int("compress_level", 4, min=0, max=9, step=None)],
    output_node=True,
    hidden=HIDDEN,
)
def save_animated_png(
    images: torch.Tensor,
    filename_prefix: str,
    fps: float,
    compress_level: int,
    context: api.ExecutionContext,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """All frames in one animated PNG (APNG), output/<prefix>_<counter>_.png."""
    frames = _frames(images)
    info = PngImagePlugin.PngInfo()
    entries = ([("prompt", prompt)] if prompt is not None else []) + (
        list(extra_pnginfo.items()) if isinstance(extra_pnginfo, dict) else []
    )
    for key, value in entries:
        info.add(
            b"comf", key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"), after_idat=True
        )
    target = _target(images, filename_prefix, context)
    name = f"{target.filename}_{target.counter:05}_.png"
    frames[0].save(
        target.folder / name,
        format="PNG",
        pnginfo=info,
        compress_level=compress_level,
        save_all=True,
        append_images=frames[1:],
        duration=_frame_ms(fps),
    )
    result = {"filename": name, "subfolder": target.subfolder, "type": "output"}
    return api.NodeOutput(ui={"images": [result], "animated": (True,)})


NODES = [save_animated_webp, save_animated_png]
