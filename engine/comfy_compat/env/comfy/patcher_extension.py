"""comfy.patcher_extension for custom packs (see engine.handles.comfy_surface.extension)."""

from engine.handles.comfy_surface.extension import (
    CallbacksMP,
    PatcherInjection,
    WrapperExecutor,
    WrappersMP,
    add_callback,
    add_callback_with_key,
    add_wrapper,
    add_wrapper_with_key,
    copy_nested_dicts,
    get_all_callbacks,
    get_all_wrappers,
    get_callbacks_with_key,
    get_wrappers_with_key,
    merge_nested_dicts,
)

__all__ = [
    "CallbacksMP",
    "PatcherInjection",
    "WrapperExecutor",
    "WrappersMP",
    "add_callback",
    "add_callback_with_key",
    "add_wrapper",
    "add_wrapper_with_key",
    "copy_nested_dicts",
    "get_all_callbacks",
    "get_all_wrappers",
    "get_callbacks_with_key",
    "get_wrappers_with_key",
    "merge_nested_dicts",
]
