"""comfy.taesd.taesd for custom packs (see engine.handles.comfy_surface.taesd)."""

from engine.handles.comfy_surface.taesd import TAESD, Block, Clamp, Decoder, Encoder, conv

__all__ = ["TAESD", "Block", "Clamp", "Decoder", "Encoder", "conv"]
