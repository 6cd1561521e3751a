"""comfy.ldm.common_dit for custom packs."""

from engine.handles.comfy_surface.dit import rms_norm

__all__ = ["rms_norm"]
