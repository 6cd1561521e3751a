"""Image files for node code: reading them into arrays, PNG writing with the workflow embedded, ComfyUI's
output file naming (engine.imageio's public names, published here so node packs depend on `engine.api`
only)."""

from __future__ import annotations

from engine import imageio as _imageio
from engine.imageio import *  # noqa: F403 - the module's __all__ is this module's surface

__all__ = list(_imageio.__all__)
