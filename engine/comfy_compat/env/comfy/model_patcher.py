"""comfy.model_patcher for custom packs: ModelPatcher is diffgraph's MODEL value class, so
``isinstance(model, ModelPatcher)`` holds for every MODEL a pack receives."""

from engine.handles.comfy_surface.extension import CallbacksMP, PatcherInjection, WrappersMP
from engine.handles.comfy_surface.patcher import (
    copy_model_options as create_model_options_clone,
)
from engine.handles.comfy_surface.patcher import (
    set_model_options_patch_replace,
    set_model_options_post_cfg_function,
    set_model_options_pre_cfg_function,
)
from engine.handles.model import ModelHandle as ModelPatcher

__all__ = [
    "CallbacksMP",
    "ModelPatcher",
    "PatcherInjection",
    "WrappersMP",
    "create_model_options_clone",
    "set_model_options_patch_replace",
    "set_model_options_post_cfg_function",
    "set_model_options_pre_cfg_function",
]
