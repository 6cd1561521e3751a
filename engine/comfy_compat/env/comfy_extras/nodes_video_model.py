"""ComfyUI's comfy_extras.nodes_video_model: its classes (diffgraph's nodes, or stand-ins; see comfy_extras/__init__)."""

from engine.comfy_compat.classic_nodes import export_classes

export_classes(globals())
