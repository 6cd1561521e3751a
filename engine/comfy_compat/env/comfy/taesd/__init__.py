"""comfy.taesd for custom packs."""
