"""comfy.ldm.modules.diffusionmodules.util for custom packs."""

from engine.handles.comfy_surface.ldm import make_beta_schedule, timestep_embedding, zero_module

__all__ = ["make_beta_schedule", "timestep_embedding", "zero_module"]
