"""comfy.ldm.lumina for custom packs."""
