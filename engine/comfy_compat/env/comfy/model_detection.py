"""ComfyUI's comfy.model_detection for custom packs: the key-prefix helper they call. diffgraph detects
model families itself (engine.diffusion.checkpoints.detect) when it loads a file."""

from __future__ import annotations

from collections.abc import Iterable

_UNET_PREFIXES = ("model.diffusion_model.", "model.model.", "net.")


def unet_prefix_from_state_dict(state_dict: Iterable[str]) -> str:
    """The prefix most diffusion-model keys share (LDM/SGM "model.diffusion_model.", audio "model.model.",
    Cosmos "net."); "model." when none holds more than five keys."""
    counts = dict.fromkeys(_UNET_PREFIXES, 0)
    for key in state_dict:
        for prefix in _UNET_PREFIXES:
            if key.startswith(prefix):
                counts[prefix] += 1
                break
    top = max(counts, key=lambda p: counts[p])
    return top if counts[top] > 5 else "model."
