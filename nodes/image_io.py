"""Image file nodes: LoadImage, LoadImageMask, LoadImageOutput, SaveImage, PreviewImage, MaskPreview
(animated files: nodes/animation.py).

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


def _input_path(context: api.ExecutionContext, image: str, folder: str = "input") -> Any:
    """Full path of an image of the input (or `folder`) folder, or of an annotated name ("x.png [output]")
    in the folder it names, as ComfyUI's LoadImage takes, with an error that says where we looked."""
    try:
        return context.folders.annotated_path(image, folder)
    except FileNotFoundError:
        raise imageio.ImageFileError(
            f"image {image!r} not found in the {folder} folder {getattr(context.folders, folder)}; "
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
    return _image_and_mask(_input_path(context, image))


# ComfyUI's mask for a picture without alpha: 64x64 zeros per frame, not the picture's size. Nodes that
# use a mask resize it, so only its shape shows; packs (and GetImageSize-style nodes) see ComfyUI's shape.
_NO_ALPHA_MASK_SIZE = 64


def _image_and_mask(path: Any) -> tuple[torch.Tensor, torch.Tensor]:
    loaded = imageio.read_image(path)
    pixels = torch.from_numpy(loaded.pixels.copy())
    if not loaded.has_alpha:
        size = _NO_ALPHA_MASK_SIZE
        return pixels, torch.zeros((pixels.shape[0], size, size), dtype=torch.float32)
    return pixels, torch.from_numpy(loaded.masks.copy())


def _output_fingerprint(image: str, context: api.ExecutionContext | None = None) -> Any:
    if context is None:
        return api.ALWAYS_CHANGED
    return imageio.file_digest(_input_path(context, image, "output"))


# ComfyUI's frontend lists this combo itself from the route (refreshable); the choices we publish as
# well are the same files, for clients that do not fetch it.
_OUTPUT_PICKER = {
    "image_upload": True,
    "image_folder": "output",
    "remote": {"route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"},
}


@api.node(
    "LoadImageOutput",
    category="image",
    display_name="Load Image (from Outputs)",
    inputs=[api.Combo("image", api.FileChoices("output"), extra=_OUTPUT_PICKER)],
    outputs=[api.IMAGE, api.MASK],
    fingerprint=_output_fingerprint,
    experimental=True,
)
def load_image_output(image: str, context: api.ExecutionContext):
    """LoadImage for a picture of the output folder (a name without a "[folder]" note is looked up
    there), e.g. to feed a result back in."""
    return _image_and_mask(_input_path(context, image, "output"))


@api.node(
    "LoadImageMask",
    category="mask",
    display_name="Load Image (as Mask)",
    inputs=[
        api.Combo("image", api.FileChoices("input"), extra=_UPLOAD),
        api.Combo("channel", MASK_CHANNELS),
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
    # A (batch, height, width) tensor - a MASK that reached an IMAGE input through a wildcard node - is
    # saved as greyscale, as ComfyUI saves it.
    if images.ndim not in (3, 4):
        raise ValueError(
            "images must be a (batch, height, width, channels) tensor (or a (batch, height, width) mask), "
            f"got shape {tuple(images.shape)}"
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
    return _preview(images, context, prompt, extra_pnginfo, compress_level=1)


def _preview(images: torch.Tensor, context: Any, prompt: Any, extra_pnginfo: Any, compress_level: int) -> Any:
    suffix = "".join(random.SystemRandom().choice(string.ascii_lowercase) for _ in range(5))
    folder = context.folders.temp
    results = _save_batch(
        images, f"ComfyUI_temp_{suffix}", folder, "temp", prompt, extra_pnginfo, compress_level
    )
    return api.NodeOutput(ui={"images": results})


@api.node(
    "MaskPreview",
    category="mask",
    display_name="MaskPreview",
    inputs=[api.Input("mask", api.MASK)],
    output_node=True,
    hidden={"prompt": api.HIDDEN_PROMPT, "extra_pnginfo": api.HIDDEN_EXTRA_PNGINFO},
)
def mask_preview(
    mask: torch.Tensor,
    context: api.ExecutionContext | None = None,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Show a mask as grey images (temp/, like PreviewImage)."""
    grey = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1).expand(-1, -1, -1, 3)
    return _preview(grey, context, prompt, extra_pnginfo, compress_level=4)


NODES = [
    load_image,
    load_image_output,
    load_image_mask,
    save_image,
    preview_image,
    mask_preview,
]
