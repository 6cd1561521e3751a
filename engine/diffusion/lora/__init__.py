"""LoRA-family adapters: file formats -> weight patches for ``engine.memory.patcher``.

``load_lora`` reads kohya-ss, diffusers/PEFT, LyCORIS (LoCon, LoHa, LoKr) and full-diff files;
``unet_key_map`` / ``text_encoder_key_map`` say which LoRA module names address which of our
parameters.
"""

from .keymap import text_encoder_key_map, unet_key_map
from .loader import LoraLoad, load_lora, load_lora_file
from .patches import LoHaPatch, LoKrPatch

__all__ = [
    "LoHaPatch",
    "LoKrPatch",
    "LoraLoad",
    "load_lora",
    "load_lora_file",
    "text_encoder_key_map",
    "unet_key_map",
]
