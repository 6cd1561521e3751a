"""ComfyUI's `comfy_execution` package (packs test for it to know the engine supports expansion)."""
