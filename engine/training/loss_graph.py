"""The loss curve of a training run as an image (LossGraphNode, and the training progress preview)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 500, 300
_MARGIN = (48, 16, 16, 28)  # left, top, right, bottom: room for the axis labels


def draw_loss_graph(losses: Sequence[float], width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """A white RGB picture with the loss per step as a blue polyline, min/max on the y axis and the
    step count on the x axis."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = _MARGIN
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
    values = [float(v) for v in losses if np.isfinite(v)]
    if not values:
        draw.text((x0 + 8, y0 + 8), "no loss values", fill="black")
        return image
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    count = len(values)
    points = [
        (
            x0 + (x1 - x0) * (i / max(count - 1, 1)),
            y1 - (y1 - y0) * ((v - lo) / span),
        )
        for i, v in enumerate(values)
    ]
    if count == 1:
        draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill="blue")
    else:
        draw.line(points, fill=(30, 80, 220), width=2)
    draw.text((4, y0), f"{hi:.4g}", fill="black")
    draw.text((4, y1 - 10), f"{lo:.4g}", fill="black")
    draw.text((x0, y1 + 8), "step 1", fill="black")
    draw.text((x1 - 60, y1 + 8), f"step {count}", fill="black")
    draw.text(((x0 + x1) // 2 - 12, y1 + 8), "loss", fill="black")
    return image


def loss_graph_array(losses: Sequence[float]) -> np.ndarray:
    """(H, W, 3) float32 0..1 version of `draw_loss_graph`, for an IMAGE batch or a PNG."""
    return np.asarray(draw_loss_graph(losses), dtype=np.float32) / 255.0
