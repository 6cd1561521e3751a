"""ComfyUI's `comfy.k_diffusion` package (the sampler functions, in `sampling`)."""
