"""comfy.ldm.flux.math for custom packs (see engine.handles.comfy_surface.dit)."""

from engine.handles.comfy_surface.dit import apply_rope, apply_rope1, attention, rope

__all__ = ["apply_rope", "apply_rope1", "attention", "rope"]
