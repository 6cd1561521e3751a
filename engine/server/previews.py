"""Live preview frames: ComfyUI's binary WebSocket message for an image.

Layout (ComfyUI server.py, BinaryEventTypes): a big-endian uint32 event type (1 = PREVIEW_IMAGE), a
big-endian uint32 image format (1 = JPEG, 2 = PNG), then the encoded image bytes.
"""

from __future__ import annotations

import io
import struct
from typing import Any

PREVIEW_IMAGE = 1
IMAGE_FORMATS = {"jpeg": 1, "png": 2}


def to_pil(preview: Any) -> Any:
    """A PIL image from what a node passes to `context.progress(..., preview)`: a PIL image, ComfyUI's
    ("JPEG", image, max_size) tuple, or an array/tensor (H, W, C) or (1, H, W, C) with values in 0..1.
    Returns None for anything else (a preview is best-effort, never an error)."""
    from PIL import Image

    if isinstance(preview, tuple) and len(preview) >= 2:
        preview = preview[1]
    if isinstance(preview, Image.Image):
        return preview
    if hasattr(preview, "detach"):  # torch tensor, without importing torch here
        preview = preview.detach().float().cpu().numpy()
    if hasattr(preview, "shape") and hasattr(preview, "dtype"):
        import numpy as np

        array = np.asarray(preview)
        if array.ndim == 4:
            array = array[0]
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            return None
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if array.shape[-1] == 1:
            array = array[..., 0]
        return Image.fromarray(array)
    return None


def encode_preview_frame(preview: Any, image_format: str = "jpeg", max_size: int = 512) -> bytes | None:
    """The whole binary message (8-byte header + image), or None when there is nothing to show."""
    from PIL import Image

    image = to_pil(preview)
    if image is None:
        return None
    if max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
    kind = image_format.lower()
    if kind not in IMAGE_FORMATS:
        kind = "jpeg"
    buffer = io.BytesIO()
    buffer.write(struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS[kind]))
    if kind == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
