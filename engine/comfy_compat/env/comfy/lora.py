"""ComfyUI's comfy.lora for custom packs: LoRA key maps and patches with diffgraph's LoRA loader.

Key maps are LoRA module name -> diffgraph module name; `load_lora` gives diffgraph weight patches keyed
"<module>.weight", which `model.add_patches(...)` (the MODEL / CLIP handles) takes.
"""

from __future__ import annotations

from typing import Any

from engine.comfy_compat import sd_bridge as _bridge


def model_lora_keys_unet(model: Any, key_map: dict[str, str] | None = None) -> dict[str, str]:
    """LoRA module names of a MODEL's UNet (kohya `lora_unet_*`, diffusers and original names)."""
    out = {} if key_map is None else key_map
    out.update(_bridge.unet_key_map(model))
    return out


def model_lora_keys_clip(model: Any, key_map: dict[str, str] | None = None) -> dict[str, str]:
    """LoRA module names of a CLIP's text encoder(s) (`lora_te_*`, `lora_te1_*`/`lora_te2_*`...)."""
    out = {} if key_map is None else key_map
    out.update(_bridge.clip_key_map(model))
    return out


def load_lora(lora: dict[str, Any], to_load: dict[str, str], log_missing: bool = True) -> dict[str, Any]:
    """The patches of a LoRA state dict for the modules `to_load` maps to."""
    return _bridge.lora_patches(lora, to_load)


def calculate_weight(
    patches: list[Any],
    weight: Any,
    key: str = "",
    intermediate_dtype: Any = None,
    original_weights: Any = None,
) -> Any:
    """`weight` with one key's patch list (strength_patch, patch, strength_model, ...) applied."""
    return _bridge.calculate_weight(patches, weight, key)
