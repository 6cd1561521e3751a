"""EasyCache and LazyCache (ComfyUI's comfy_extras/nodes_easycache.py): a MODEL clone that skips model
calls whose output is predicted to change little, reusing the last evaluated (output - input) instead.
The mechanism is engine.diffusion.sampling.step_cache; engine.handles.model_speed attaches it as a
wrapper in the clone's ``transformer_options`` (EasyCache around the network call, LazyCache around the
guided prediction)."""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api.model_speed import with_step_cache

CATEGORY = "advanced/debug/model"

_INPUTS = [
    api.Input("model", api.MODEL),
    api.Float("reuse_threshold", 0.2, min=0.0, max=3.0, step=0.01),
    api.Float("start_percent", 0.15, min=0.0, max=1.0, step=0.01),
    api.Float("end_percent", 0.95, min=0.0, max=1.0, step=0.01),
    api.Boolean("verbose", False),
]


@api.node(
    "EasyCache",
    category=CATEGORY,
    display_name="EasyCache",
    inputs=_INPUTS,
    outputs=[api.MODEL],
    experimental=True,
)
def easy_cache(model: Any, reuse_threshold: float, start_percent: float, end_percent: float, verbose: bool):
    """Skips UNet calls between start_percent and end_percent of the schedule while the predicted
    cumulative relative output change stays under reuse_threshold (0 never skips)."""
    return (with_step_cache(model, "EasyCache", reuse_threshold, start_percent, end_percent, verbose),)


@api.node(
    "LazyCache",
    category=CATEGORY,
    display_name="LazyCache",
    inputs=_INPUTS,
    outputs=[api.MODEL],
    experimental=True,
)
def lazy_cache(model: Any, reuse_threshold: float, start_percent: float, end_percent: float, verbose: bool):
    """EasyCache's predictor on the whole guided prediction (all conditionings and CFG at once)."""
    return (with_step_cache(model, "LazyCache", reuse_threshold, start_percent, end_percent, verbose),)


NODES = [easy_cache, lazy_cache]
