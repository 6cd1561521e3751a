"""ComfyUI's comfy.lora_convert for custom packs. diffgraph's LoRA loader reads the kohya, diffusers/PEFT
and LyCORIS layouts itself, so a LoRA state dict needs no conversion before comfy.lora.load_lora."""

from __future__ import annotations

from typing import Any


def convert_lora(sd: dict[str, Any]) -> dict[str, Any]:
    return sd
