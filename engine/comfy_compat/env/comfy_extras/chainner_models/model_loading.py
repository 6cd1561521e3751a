"""ComfyUI's comfy_extras.chainner_models.model_loading: building an upscale model from a state dict, with
diffgraph's upscaler loader (ESRGAN / RRDB family, the architectures diffgraph implements)."""

from __future__ import annotations

from typing import Any

from engine.comfy_compat.sd_bridge import upscale_model_from_state_dict


def load_state_dict(state_dict: dict[str, Any]) -> Any:
    """An UPSCALE_MODEL value from a state dict (comfy.utils.load_torch_file of the model file)."""
    return upscale_model_from_state_dict(state_dict)
