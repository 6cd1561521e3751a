"""ComfyUI's SaveImage.save_images for packs: the PNG files and the `{"ui": {"images": [...]}}` answer.

Packs subclass SaveImage / PreviewImage and set `output_dir`, `type`, `prefix_append` and
`compress_level` on the instance; the files are named and numbered as diffgraph's SaveImage names them
(engine.imageio.save_image_path, ComfyUI's `<prefix>_<counter:05>_.png`) with the workflow in the PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine import imageio


def save_images(
    images: Any,
    filename_prefix: str,
    output_dir: str | Path,
    folder_type: str,
    *,
    compress_level: int = 4,
    prompt: Any = None,
    extra_pnginfo: Any = None,
) -> list[dict[str, str]]:
    """Write each image of a batch as a PNG; ComfyUI's result entries. As in ComfyUI, the batch is iterated
    over its first dimension: an IMAGE (B, H, W, C) gives colour PNGs, a MASK (B, H, W) grayscale ones."""
    batch = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
    if batch.ndim not in (3, 4):
        raise ValueError(
            "images must be an IMAGE (batch, height, width, channels) or a MASK (batch, height, width), "
            f"got shape {tuple(batch.shape)}"
        )
    target = imageio.save_image_path(filename_prefix, output_dir, int(batch.shape[2]), int(batch.shape[1]))
    text = imageio.png_text_chunks(prompt, extra_pnginfo if isinstance(extra_pnginfo, dict) else None)
    results = []
    for index, image in enumerate(batch):
        name = target.file_name(index, batch_number=index)
        imageio.save_png(
            target.folder / name, image.detach().cpu().float().numpy(), text, compress_level=compress_level
        )
        results.append({"filename": name, "subfolder": target.subfolder, "type": folder_type})
    return results
