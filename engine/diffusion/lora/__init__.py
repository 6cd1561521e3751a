"""LoRA-family adapters: file formats -> weight patches (``engine.memory.weight_patches``, where every
patch kind lives) for ``engine.memory.patcher``.

``load_lora`` reads kohya-ss, diffusers/PEFT, LyCORIS (LoCon, LoHa, LoKr) and full-diff files;
``unet_key_map`` / ``text_encoder_key_map`` say which LoRA module names address which of our
parameters.
"""

from engine.memory.weight_patches import LoHaPatch, LoKrPatch

from .keymap import text_encoder_key_map, unet_key_map
from .loader import LoraLoad, load_lora, load_lora_file

__all__ = [
    "LoHaPatch",
    "LoKrPatch",
    "LoraLoad",
    "load_lora",
    "load_lora_file",
    "text_encoder_key_map",
    "unet_key_map",
]
