"""comfy.ldm.flux for custom packs."""
