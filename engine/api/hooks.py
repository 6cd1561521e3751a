"""ComfyUI's hooks for node code: HOOKS groups, HOOK_KEYFRAMES schedules and the CLIP hooks of
SetClipHooks (engine.handles.hooks, which says how sampling applies them)."""

from __future__ import annotations

from engine.handles.hooks import (
    INTERPOLATIONS,
    ClipHooks,
    HookGroup,
    HookKeyframe,
    HookKeyframes,
    interpolated,
    lora_hook,
    model_as_lora_hook,
    with_hooks,
)

__all__ = [
    "INTERPOLATIONS",
    "ClipHooks",
    "HookGroup",
    "HookKeyframe",
    "HookKeyframes",
    "interpolated",
    "lora_hook",
    "model_as_lora_hook",
    "with_hooks",
]
