"""comfy.ldm.util for custom packs."""

from engine.handles.comfy_surface.ldm import default, exists

__all__ = ["default", "exists"]
