"""ComfyUI's `comfy_api.v0_0_2`: the stable snapshot of the V3 API, the same classes as `comfy_api.latest`."""

from comfy_api.latest import ComfyAPI, ComfyAPISync, ComfyExtension, Input, InputImpl, Types, io, ui

__all__ = ["ComfyAPI", "ComfyAPISync", "ComfyExtension", "Input", "InputImpl", "Types", "io", "ui"]
