"""ComfyUI's `comfy_api` package: the versioned node API (`comfy_api.latest`, `comfy_api.v0_0_2`)."""
