"""comfy.ldm.modules.diffusionmodules.openaimodel for custom packs (see
engine.handles.comfy_surface.ldm)."""

from engine.handles.comfy_surface.ldm import (
    Downsample,
    ResBlock,
    SpatialTransformer,
    SpatialVideoTransformer,
    TimestepBlock,
    TimestepEmbedSequential,
    UNetModel,
    Upsample,
    forward_timestep_embed,
    timestep_embedding,
)

__all__ = [
    "Downsample",
    "ResBlock",
    "SpatialTransformer",
    "SpatialVideoTransformer",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
    "forward_timestep_embed",
    "timestep_embedding",
]
