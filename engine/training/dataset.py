"""Image datasets from a folder, as ComfyUI's LoadImage(Text)SetFromFolder nodes read them.

A dataset folder holds images (.png, .jpg, .jpeg, .webp) and optionally, next to each, a ``.txt`` file
with its caption. Sub-folders follow kohya-ss sd-scripts' convention ``<repeats>_<name>``: their images
count ``repeats`` times (a sub-folder without a number prefix counts once).

All images of a batch must share one size: the first image's size, or the ``width``/``height`` asked
for, reached by ``resize_method``: "Stretch" (resample to the size), "Crop" (keep the top-left part, as
ComfyUI crops), "Pad" (scale to fit inside, centre on black) or "None" (a different size is an error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
RESIZE_METHODS = ("None", "Stretch", "Crop", "Pad")


class DatasetError(ValueError):
    """A dataset folder cannot be read as asked (empty, mixed sizes with resize "None"...)."""


@dataclass(frozen=True)
class DatasetItem:
    image: Path
    caption: str


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _repeats(folder_name: str) -> int:
    head = folder_name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1


def _caption(image: Path) -> str:
    text = image.with_suffix(".txt")
    return text.read_text(encoding="utf-8").strip() if text.is_file() else ""


def list_items(folder: Path) -> list[DatasetItem]:
    """The images of `folder` (sorted by name, so a run is reproducible) with their captions; images of
    kohya-style sub-folders repeated as their name says."""
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    items: list[DatasetItem] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if _is_image(entry):
            items.append(DatasetItem(entry, _caption(entry)))
        elif entry.is_dir() and not entry.name.startswith("."):
            inner = [DatasetItem(p, _caption(p)) for p in sorted(entry.iterdir()) if _is_image(p)]
            items.extend(inner * _repeats(entry.name))
    if not items:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in dataset folder {folder}")
    return items


def _fit(image: Image.Image, size: tuple[int, int], method: str, path: Path) -> Image.Image:
    if image.size == size:
        return image
    if method == "Stretch":
        return image.resize(size, Image.Resampling.LANCZOS)
    if method == "Crop":
        return image.crop((0, 0, *size))  # outside the picture PIL fills black
    if method == "Pad":
        return ImageOps.pad(image, size, method=Image.Resampling.LANCZOS, color=(0, 0, 0))
    raise DatasetError(
        f"{path.name} is {image.size[0]}x{image.size[1]}, the dataset is {size[0]}x{size[1]}: "
        "choose a resize_method (Stretch, Crop or Pad) or give every image the same size"
    )


def load_images(
    paths: list[Path], resize_method: str = "None", width: int | None = None, height: int | None = None
) -> torch.Tensor:
    """(N, H, W, 3) float32 0..1 IMAGE batch of `paths`, all brought to one size (see module docstring)."""
    if resize_method not in RESIZE_METHODS:
        raise DatasetError(f"resize_method must be one of {RESIZE_METHODS}, got {resize_method!r}")
    if not paths:
        raise DatasetError("no images to load")
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for path in paths:
        with Image.open(path) as opened:
            image = opened.point(lambda v: v / 255) if opened.mode == "I" else opened
            image = image.convert("RGB")
        if size is None:
            size = (width or image.size[0], height or image.size[1])
        frames.append(np.asarray(_fit(image, size, resize_method, path), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(frames))
