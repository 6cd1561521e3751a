"""Image file nodes: LoadImage, LoadImageMask, SaveImage, PreviewImage.

Files are read and written through engine.api.images (Pillow); folders come from the runtime
(`context.folders`), never from globals. Saved PNGs embed the API graph (`prompt` chunk) and the UI graph
(`workflow` chunk), so `diffgraph run image.png` and ComfyUI's canvas can both re-open them.
"""

from __future__ import annotations

import random
import string
from typing import Any

import numpy as np
import torch

from engine import api
from engine.api import images as imageio

_UPLOAD = {"image_upload": True}
MASK_CHANNELS = ["alpha", "red", "green", "blue"]


def _input_path(context: api.ExecutionContext, image: str) -> Any:
    """Full path of an input-folder image (or of an annotated name, "x.png [output]", in the folder it
    names, as ComfyUI's LoadImage takes), with an error that says where we looked."""
    try:
        return context.folders.annotated_path(image, "input")
    except FileNotFoundError:
        raise imageio.ImageFileError(
            f"input image {image!r} not found in the input folder {context.folders.input}; "
            "upload it or copy it there"
        ) from None


def _input_fingerprint(image: str, context: api.ExecutionContext | None = None) -> Any:
    """The file's content hash, so that replacing an input image re-runs the node and what follows.

    Hooks only get a `context` where the runtime passes one; without it the file cannot be located,
    so the node is treated as changed (correct, just not cached).
    """
    if context is None:
        return api.ALWAYS_CHANGED
    return imageio.file_digest(_input_path(context, image))


@api.node(
    "LoadImage",
    category="image",
    display_name="Load Image",
    inputs=[api.Combo("image", api.FileChoices("input"), extra=_UPLOAD)],
    outputs=[api.IMAGE, api.MASK],
    fingerprint=_input_fingerprint,
)
def load_image(image: str, context: api.ExecutionContext):
    """All frames of an input image as an IMAGE batch, and MASK = 1 - alpha (zeros without alpha)."""
    loaded = imageio.read_image(_input_path(context, image))
    return (torch.from_numpy(loaded.pixels.copy()), torch.from_numpy(loaded.masks.copy()))


@api.node(
    "LoadImageMask",
    category="mask",
    display_name="Load Image (as Mask)",
    inputs=[
        api.Combo("image", api.FileChoices("input"), extra=_UPLOAD),
        api.Combo("channel", MASK_CHANNELS, default="alpha"),
    ],
    outputs=[api.MASK],
    fingerprint=_input_fingerprint,
)
def load_image_mask(image: str, channel: str, context: api.ExecutionContext):
    """One channel of an input image as a (1, H, W) mask; alpha is inverted (transparent = 1)."""
    mask = imageio.read_image_channel(_input_path(context, image), channel)
    return (torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0),)


def _save_batch(
    images: torch.Tensor,
    filename_prefix: str,
    root: Any,
    folder_type: str,
    prompt: Any,
    extra_pnginfo: Any,
    compress_level: int,
) -> list[dict[str, str]]:
    if images.ndim != 4:
        raise ValueError(
            f"images must be a (batch, height, width, channels) tensor, got shape {tuple(images.shape)}"
        )
    target = imageio.save_image_path(filename_prefix, root, int(images.shape[2]), int(images.shape[1]))
    text = imageio.png_text_chunks(prompt, extra_pnginfo if isinstance(extra_pnginfo, dict) else None)
    results = []
    for index, image in enumerate(images):
        name = target.file_name(index, batch_number=index)
        imageio.save_png(
            target.folder / name, image.detach().cpu().float().numpy(), text, compress_level=compress_level
        )
        results.append({"filename": name, "subfolder": target.subfolder, "type": folder_type})
    return results


@api.node(
    "SaveImage",
    category="image",
    display_name="Save Image",
    inputs=[api.Input("images", api.IMAGE), api.String("filename_prefix", "ComfyUI")],
    output_node=True,
    hidden={"prompt": api.HIDDEN_PROMPT, "extra_pnginfo": api.HIDDEN_EXTRA_PNGINFO},
)
def save_image(
    images: torch.Tensor,
    filename_prefix: str = "ComfyUI",
    context: api.ExecutionContext | None = None,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Write each image as output/<prefix>_<counter>_.png with the workflow in its text chunks."""
    results = _save_batch(
        images, filename_prefix, context.folders.output, "output", prompt, extra_pnginfo, compress_level=4
    )
    return api.NodeOutput(ui={"images": results})


@api.node(
    "PreviewImage",
    category="image",
    display_name="Preview Image",
    inputs=[api.Input("images", api.IMAGE)],
    output_node=True,
    hidden={"prompt": api.HIDDEN_PROMPT, "extra_pnginfo": api.HIDDEN_EXTRA_PNGINFO},
)
def preview_image(
    images: torch.Tensor,
    context: api.ExecutionContext | None = None,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Write the images to temp/ (fast compression, random prefix) for the canvas to show."""
    suffix = "".join(random.SystemRandom().choice(string.ascii_lowercase) for _ in range(5))
    results = _save_batch(
        images,
        f"ComfyUI_temp_{suffix}",
        context.folders.temp,
        "temp",
        prompt,
        extra_pnginfo,
        compress_level=1,
    )
    return api.NodeOutput(ui={"images": results})


NODES = [load_image, load_image_mask, save_image, preview_image]
