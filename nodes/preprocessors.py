"""Control-image preprocessors computed with torch (Canny, threshold). ImageInvert and ImageToMask are in
nodes/image.py and nodes/mask.py.

Depth, normal, pose, soft-edge and segmentation preprocessors need trained networks and are not built
in (see engine/diffusion/preprocess.py); custom node packs provide them.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import models

_pp = models.preprocess


@api.node(
    "Canny",
    category="image/preprocessors",
    inputs=[
        api.Input("image", api.IMAGE),
        api.Float("low_threshold", 0.4, min=0.01, max=0.99, step=0.01),
        api.Float("high_threshold", 0.8, min=0.01, max=0.99, step=0.01),
    ],
    outputs=[api.IMAGE],
)
def canny(image: Any, low_threshold: float, high_threshold: float):
    """Canny edges (white on black), for canny ControlNets."""
    return (_pp.canny(image, low_threshold, high_threshold),)


@api.node(
    "ImageThreshold",
    category="image/preprocessors",
    display_name="Image Threshold (scribble)",
    inputs=[api.Input("image", api.IMAGE), api.Float("threshold", 0.5, min=0.0, max=1.0, step=0.01)],
    outputs=[api.IMAGE],
)
def image_threshold(image: Any, threshold: float):
    """Black/white image: white where the luminance is at least `threshold`."""
    return (_pp.threshold(image, threshold),)


NODES = [canny, image_threshold]
