"""ComfyUI's comfy.ldm package names for custom packs (see engine.handles.comfy_surface.ldm)."""
