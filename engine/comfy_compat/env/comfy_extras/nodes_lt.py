"""ComfyUI's comfy_extras.nodes_lt (LTX-Video): its classes as stand-ins (diffgraph has no LTX-Video), and
the helper functions packs import from it, which say so when called."""

from __future__ import annotations

from typing import Any

from engine.comfy_compat.classic_nodes import export_classes


def _unavailable(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"comfy_extras.nodes_lt.{name}: LTX-Video is not supported by diffgraph")

    call.__name__ = name
    return call


get_noise_mask = _unavailable("get_noise_mask")
_append_guide_attention_entry = _unavailable("_append_guide_attention_entry")
conditioning_get_any_value = _unavailable("conditioning_get_any_value")

export_classes(globals())
