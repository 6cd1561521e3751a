"""comfy.ldm.modules.attention for custom packs (see engine.handles.comfy_surface.attention and
engine.handles.comfy_surface.ldm)."""

import logging

from engine.handles.comfy_surface.attention import (
    attention_basic,
    attention_flash,
    attention_pytorch,
    attention_sage,
    attention_split,
    attention_sub_quad,
    attention_xformers,
    optimized_attention,
    optimized_attention_for_device,
    optimized_attention_masked,
    wrap_attn,
)
from engine.handles.comfy_surface.ldm import (
    GEGLU,
    BasicTransformerBlock,
    CrossAttention,
    FeedForward,
    Normalize,
    SpatialTransformer,
    SpatialVideoTransformer,
    default,
    exists,
)

__all__ = [
    "GEGLU",
    "BasicTransformerBlock",
    "CrossAttention",
    "FeedForward",
    "Normalize",
    "SpatialTransformer",
    "SpatialVideoTransformer",
    "attention_basic",
    "attention_flash",
    "attention_pytorch",
    "attention_sage",
    "attention_split",
    "attention_sub_quad",
    "attention_xformers",
    "default",
    "exists",
    "get_attention_function",
    "optimized_attention",
    "optimized_attention_for_device",
    "optimized_attention_masked",
    "register_attention_function",
    "wrap_attn",
]

REGISTERED_ATTENTION_FUNCTIONS = {
    "pytorch": attention_pytorch,
    "split": attention_split,
    "sub_quad": attention_sub_quad,
}


def register_attention_function(name, func):
    if name in REGISTERED_ATTENTION_FUNCTIONS:
        logging.warning("Attention function %s already registered, skipping registration.", name)
        return
    REGISTERED_ATTENTION_FUNCTIONS[name] = func


def get_attention_function(name, default=...):
    if name == "optimized":
        return optimized_attention
    if name in REGISTERED_ATTENTION_FUNCTIONS:
        return REGISTERED_ATTENTION_FUNCTIONS[name]
    if default is ...:
        raise KeyError(f"Attention function {name} not found.")
    return default
