"""ComfyUI's comfy_extras.nodes_hypernetwork: `load_hypernetwork_patch` (the attention patch packs set on
their own models) over engine.handles.hypernetwork, and the HypernetworkLoader class (diffgraph's node,
which applies the same patch)."""

from __future__ import annotations

from typing import Any

from engine.comfy_compat.classic_nodes import export_classes
from engine.handles.hypernetwork import load_hypernetwork


def load_hypernetwork_patch(path: Any, strength: float) -> Any:
    """The "attn1_patch" / "attn2_patch" function `(q, k, v, extra_options) -> (q, k', v')` for the
    hypernetwork file at `path`. Unlike ComfyUI, a file it cannot use raises (AdapterFileError naming the
    file and the reason) instead of giving None, which would leave the model silently unpatched."""
    return load_hypernetwork(path, strength)


export_classes(globals())
