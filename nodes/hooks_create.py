"""ComfyUI's nodes that make HOOKS and HOOK_KEYFRAMES: CreateHookLora (+ model-only), CreateHookModelAsLora
(+ model-only), the keyframe nodes, SetHookKeyframes and CombineHooks [2/4/8].

A HOOKS value (engine.handles.hooks.HookGroup) goes onto conditionings (Cond Set Props & co., in
nodes/hooks.py) or a CLIP (SetClipHooks); sampling then evaluates those conditionings with the hooks'
weight patches at `strength_model` times the current keyframe's strength. Values are never changed in
place: every node returns new groups / schedules, so cached outputs stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from engine import api
from engine.api import hooks as H

log = logging.getLogger(__name__)

_STRENGTH = {"min": -20.0, "max": 20.0, "step": 0.01}
_PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}
_KF_OUT = [api.Output(api.HOOK_KEYFRAMES, "HOOK_KF")]


def _prev(prev_hooks: Any) -> Any:
    return prev_hooks if prev_hooks is not None else H.HookGroup()


def _lora_hook(name: str, strength_model: float, strength_clip: float, prev_hooks: Any, context: Any):
    prev = _prev(prev_hooks)
    if strength_model == 0 and strength_clip == 0:
        return (prev,)
    path = context.folders.full_path("loras", name)
    return (prev.combined(H.lora_hook(path, strength_model, strength_clip)),)


@api.node(
    "CreateHookLora",
    category="advanced/hooks/create",
    display_name="Create Hook LoRA",
    inputs=[
        api.Combo("lora_name", api.FileChoices("loras")),
        api.Float("strength_model", 1.0, **_STRENGTH),
        api.Float("strength_clip", 1.0, **_STRENGTH),
        api.Input("prev_hooks", api.HOOKS, optional=True),
    ],
    outputs=[api.HOOKS],
    experimental=True,
)
def create_hook_lora(
    lora_name: str,
    strength_model: float,
    strength_clip: float,
    context: api.ExecutionContext,
    prev_hooks: Any = None,
):
    """A LoRA hook (added to `prev_hooks`): applied to the model while sampling the conditionings that
    carry it, and to a text encoder through SetClipHooks. Both strengths 0: `prev_hooks` unchanged."""
    return _lora_hook(lora_name, strength_model, strength_clip, prev_hooks, context)


@api.node(
    "CreateHookLoraModelOnly",
    category="advanced/hooks/create",
    display_name="Create Hook LoRA (MO)",
    inputs=[
        api.Combo("lora_name", api.FileChoices("loras")),
        api.Float("strength_model", 1.0, **_STRENGTH),
        api.Input("prev_hooks", api.HOOKS, optional=True),
    ],
    outputs=[api.HOOKS],
    experimental=True,
)
def create_hook_lora_model_only(
    lora_name: str, strength_model: float, context: api.ExecutionContext, prev_hooks: Any = None
):
    """CreateHookLora with strength_clip 0."""
    return _lora_hook(lora_name, strength_model, 0.0, prev_hooks, context)


def _model_hook(name: str, strength_model: float, strength_clip: float, prev_hooks: Any, context: Any):
    path = context.folders.full_path("checkpoints", name)
    roots = context.folders.roots("embeddings")
    embeddings = next((r for r in roots if r.is_dir()), None)
    hook = H.model_as_lora_hook(
        path, strength_model, strength_clip, manager=context.models, embeddings_folder=embeddings
    )
    return (_prev(prev_hooks).combined(hook),)


@api.node(
    "CreateHookModelAsLora",
    category="advanced/hooks/create",
    display_name="Create Hook Model as LoRA",
    inputs=[
        api.Combo("ckpt_name", api.FileChoices("checkpoints")),
        api.Float("strength_model", 1.0, **_STRENGTH),
        api.Float("strength_clip", 1.0, **_STRENGTH),
        api.Input("prev_hooks", api.HOOKS, optional=True),
    ],
    outputs=[api.HOOKS],
    experimental=True,
)
def create_hook_model_as_lora(
    ckpt_name: str,
    strength_model: float,
    strength_clip: float,
    context: api.ExecutionContext,
    prev_hooks: Any = None,
):
    """A hook whose patch is another checkpoint's weight minus the model's: at strength s the hooked
    conditionings are sampled with (1 - s) * ours + s * theirs (the same for the text encoder)."""
    return _model_hook(ckpt_name, strength_model, strength_clip, prev_hooks, context)


@api.node(
    "CreateHookModelAsLoraModelOnly",
    category="advanced/hooks/create",
    display_name="Create Hook Model as LoRA (MO)",
    inputs=[
        api.Combo("ckpt_name", api.FileChoices("checkpoints")),
        api.Float("strength_model", 1.0, **_STRENGTH),
        api.Input("prev_hooks", api.HOOKS, optional=True),
    ],
    outputs=[api.HOOKS],
    experimental=True,
)
def create_hook_model_as_lora_model_only(
    ckpt_name: str, strength_model: float, context: api.ExecutionContext, prev_hooks: Any = None
):
    """CreateHookModelAsLora with strength_clip 0."""
    return _model_hook(ckpt_name, strength_model, 0.0, prev_hooks, context)


@api.node(
    "SetHookKeyframes",
    category="advanced/hooks/scheduling",
    display_name="Set Hook Keyframes",
    inputs=[api.Input("hooks", api.HOOKS), api.Input("hook_kf", api.HOOK_KEYFRAMES, optional=True)],
    outputs=[api.HOOKS],
    experimental=True,
)
def set_hook_keyframes(hooks: Any, hook_kf: Any = None):
    """The hooks with this strength schedule (they stay the same hooks: combining keeps one of each)."""
    if hook_kf is None:
        return (hooks,)
    return (hooks.with_keyframes(hook_kf),)


def _prev_kf(prev: Any) -> Any:
    return prev if prev is not None else H.HookKeyframes()


@api.node(
    "CreateHookKeyframe",
    category="advanced/hooks/scheduling",
    display_name="Create Hook Keyframe",
    inputs=[
        api.Float("strength_mult", 1.0, **_STRENGTH),
        api.Float("start_percent", 0.0, **_PERCENT),
        api.Input("prev_hook_kf", api.HOOK_KEYFRAMES, optional=True),
    ],
    outputs=_KF_OUT,
    experimental=True,
)
def create_hook_keyframe(strength_mult: float, start_percent: float, prev_hook_kf: Any = None):
    """A keyframe: from `start_percent` of the steps on, the hooks' strength is multiplied by
    `strength_mult`; it holds for at least one step (guarantee_steps 1) once reached."""
    return (_prev_kf(prev_hook_kf).add(H.HookKeyframe(strength_mult, start_percent)),)


def _keyframes(prev: Any, percents: list[float], strengths: Iterable[float], show: bool) -> Any:
    """ComfyUI's rule: the first keyframe guarantees one step, the others none."""
    out = _prev_kf(prev)
    for i, (percent, strength) in enumerate(zip(percents, strengths, strict=False)):
        out = out.add(H.HookKeyframe(float(strength), percent, guarantee_steps=1 if i == 0 else 0))
        if show:
            log.info("Hook Keyframe - start_percent:%s = %s", percent, strength)
    return out


@api.node(
    "CreateHookKeyframesInterpolated",
    category="advanced/hooks/scheduling",
    display_name="Create Hook Keyframes Interp.",
    inputs=[
        api.Float("strength_start", 1.0, min=0.0, max=10.0, step=0.001),
        api.Float("strength_end", 1.0, min=0.0, max=10.0, step=0.001),
        api.Combo("interpolation", list(H.INTERPOLATIONS)),
        api.Float("start_percent", 0.0, **_PERCENT),
        api.Float("end_percent", 1.0, **_PERCENT),
        api.Int("keyframes_count", 5, min=2, max=100, step=1),
        api.Boolean("print_keyframes", False),
        api.Input("prev_hook_kf", api.HOOK_KEYFRAMES, optional=True),
    ],
    outputs=_KF_OUT,
    experimental=True,
)
def create_hook_keyframes_interpolated(
    strength_start: float,
    strength_end: float,
    interpolation: str,
    start_percent: float,
    end_percent: float,
    keyframes_count: int,
    print_keyframes: bool = False,
    prev_hook_kf: Any = None,
):
    """`keyframes_count` keyframes at evenly spaced percents, strengths from start to end along the curve."""
    percents = H.interpolated(start_percent, end_percent, keyframes_count, "linear")
    strengths = H.interpolated(strength_start, strength_end, keyframes_count, interpolation)
    return (_keyframes(prev_hook_kf, percents, strengths, print_keyframes),)


@api.node(
    "CreateHookKeyframesFromFloats",
    category="advanced/hooks/scheduling",
    display_name="Create Hook Keyframes From Floats",
    inputs=[
        api.Input("floats_strength", api.FLOATS, default=-1, min=-1, step=0.001, force_input=True),
        api.Float("start_percent", 0.0, **_PERCENT),
        api.Float("end_percent", 1.0, **_PERCENT),
        api.Boolean("print_keyframes", False),
        api.Input("prev_hook_kf", api.HOOK_KEYFRAMES, optional=True),
    ],
    outputs=_KF_OUT,
    experimental=True,
)
def create_hook_keyframes_from_floats(
    floats_strength: Any,
    start_percent: float,
    end_percent: float,
    print_keyframes: bool = False,
    prev_hook_kf: Any = None,
):
    """One keyframe per value of `floats_strength` (a number or a list), evenly spaced over the range."""
    if isinstance(floats_strength, (int, float)):
        values = [float(floats_strength)]
    elif isinstance(floats_strength, Iterable) and not isinstance(floats_strength, (str, bytes)):
        values = [float(v) for v in floats_strength]
    else:
        raise TypeError(
            f"floats_strength must be a number or a list of numbers, got {type(floats_strength).__name__}"
        )
    percents = H.interpolated(start_percent, end_percent, len(values), "linear")
    return (_keyframes(prev_hook_kf, percents, values, print_keyframes),)


def _combine_node(node_type: str, letters: str, display: str) -> Any:
    names = [f"hooks_{c}" for c in letters]

    def combine_hooks(**groups: Any):
        return (H.HookGroup.combine_all(groups.get(n) for n in names),)

    combine_hooks.__doc__ = f"The union of the given hook groups ({', '.join(names)}; none given: nothing)."
    return api.node(
        node_type,
        category="advanced/hooks/combine",
        display_name=display,
        inputs=[api.Input(n, api.HOOKS, optional=True) for n in names],
        outputs=[api.HOOKS],
        experimental=True,
    )(combine_hooks)


combine_hooks_2 = _combine_node("CombineHooks2", "AB", "Combine Hooks [2]")
combine_hooks_4 = _combine_node("CombineHooks4", "ABCD", "Combine Hooks [4]")
combine_hooks_8 = _combine_node("CombineHooks8", "ABCDEFGH", "Combine Hooks [8]")


NODES = [
    create_hook_lora,
    create_hook_lora_model_only,
    create_hook_model_as_lora,
    create_hook_model_as_lora_model_only,
    set_hook_keyframes,
    create_hook_keyframe,
    create_hook_keyframes_interpolated,
    create_hook_keyframes_from_floats,
    combine_hooks_2,
    combine_hooks_4,
    combine_hooks_8,
]
