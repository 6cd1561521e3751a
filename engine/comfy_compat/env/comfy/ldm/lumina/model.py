"""comfy.ldm.lumina.model for custom packs: the names packs build on (diffgraph runs no Lumina model)."""

from engine.handles.comfy_surface.dit import FeedForward

__all__ = ["FeedForward"]
