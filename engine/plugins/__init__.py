"""Discovery of node packs (the built-in one and custom_nodes/) and the ComfyUI-classic adapter."""
