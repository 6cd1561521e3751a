"""comfy.taesd.taesd's names for custom packs: the one TAESD implementation lives in
engine.diffusion.models.taesd (previews use it too); packs build their own tiny decoders from ``conv``,
``Clamp`` and ``Block``."""

from __future__ import annotations

from engine.diffusion.models.taesd import TAESD, Block, Clamp, Decoder, Encoder, conv

__all__ = ["TAESD", "Block", "Clamp", "Decoder", "Encoder", "conv"]
