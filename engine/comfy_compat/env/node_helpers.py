"""ComfyUI's `node_helpers`: conditioning edits, tolerant Pillow opening, the hash function for file
comparisons, dtype names and alpha matching between images."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from comfy.cli_args import args
from PIL import ImageFile, UnidentifiedImageError


def conditioning_set_values(
    conditioning: list[Any], values: dict[str, Any] | None = None, append: bool = False
) -> list[Any]:
    """A copy of each [tensor, options] pair with `values` set in its options (added to the old value
    when `append` and there is one)."""
    out = []
    for tensor, options in conditioning:
        options = options.copy()
        for key, value in (values or {}).items():
            previous = options.get(key) if append else None
            options[key] = previous + value if previous is not None else value
        out.append([tensor, options])
    return out


def pillow(fn: Callable[[Any], Any], arg: Any) -> Any:
    """fn(arg), retried with Pillow's LOAD_TRUNCATED_IMAGES when Pillow refuses a damaged file."""
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def hasher() -> Callable[..., Any]:
    functions = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
    return functions[args.default_hashing_function]


def string_to_torch_dtype(string: str) -> torch.dtype | None:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(string)


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's rule: a source with more channels than the destination loses the extra ones; a
    destination with more channels than the source gets one more channel, opaque."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = torch.nn.functional.pad(destination, (0, 1))
        destination[..., -1] = 1.0
    return destination, source


def is_link(obj: Any) -> bool:
    """Whether a prompt input value is a link [node_id (str), output index (a number)]."""
    return (
        isinstance(obj, list)
        and len(obj) == 2
        and isinstance(obj[0], str)
        and isinstance(obj[1], int | float)
    )
