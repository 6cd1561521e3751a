"""ComfyUI's (older) comfy_extras.chainner_models package: upscale-model loading."""
