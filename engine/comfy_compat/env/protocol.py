"""ComfyUI's `protocol` module: the binary WebSocket message types."""

from engine.comfy_compat.prompt_server import BinaryEventTypes

__all__ = ["BinaryEventTypes"]
