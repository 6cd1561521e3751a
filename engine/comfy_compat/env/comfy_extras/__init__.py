"""ComfyUI's comfy_extras package for custom packs: each `nodes_*` module exposes the classes ComfyUI's
module of that name defines, as diffgraph's built-in nodes of the same node type (see
engine.comfy_compat.classic_nodes), plus the helper functions packs import from it."""
