"""ComfyUI's hook-conditioning nodes: ConditioningTimestepsRange, the Cond (Pair) Set Props / Set Props
Combine / Pair Combine / Set Default Combine nodes and SetClipHooks.

The option keys are those of ConditioningSetMask and ConditioningSetTimestepRange ("mask",
"set_area_to_bounds", "mask_strength", "start_percent", "end_percent"), plus "hooks" (a HOOKS group:
the entry is sampled with the group's weight patches, see engine.handles.hooks; a group already on an
entry is combined with the new one, as ComfyUI appends) and "default" (ConditioningSetDefaultCombine:
the entry covers what the other entries of its side leave uncovered). The nodes that make HOOKS are in
nodes/hooks_create.py.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import hooks as H

from ._image_ops import checked_mask
from .conditioning import _entries


def _props_inputs(*conditionings: str) -> list[api.Input]:
    return [
        *(api.Input(name, api.CONDITIONING) for name in conditionings),
        api.Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
        api.Combo("set_cond_area", ["default", "mask bounds"]),
        api.Input("mask", api.MASK, optional=True),
        api.Input("hooks", api.HOOKS, optional=True),
        api.Input("timesteps", api.TIMESTEPS_RANGE, optional=True),
    ]


_PAIR_OUTPUTS = [api.Output(api.CONDITIONING, "positive"), api.Output(api.CONDITIONING, "negative")]


def _hooks(value: Any) -> Any:
    if value is not None and not isinstance(value, H.HookGroup):
        raise TypeError(
            f"hooks must be a HOOKS value (from CreateHookLora & co.), got {type(value).__name__}"
        )
    return value


def _timesteps(value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"timesteps must be a TIMESTEPS_RANGE (start_percent, end_percent), got {value!r}")
    return float(value[0]), float(value[1])


def _set_props(
    conditioning: Any, strength: float, set_cond_area: str, mask: Any, timesteps: Any, hooks: Any = None
) -> list[list[Any]]:
    """ComfyUI's set_conds_props for one conditioning: the hooks (combined with the entry's own), the
    mask options only when a mask is given (then with its strength), the step range only when one is."""
    out = H.with_hooks(_entries(conditioning), _hooks(hooks))
    values: dict[str, Any] = {}
    if mask is not None:
        values.update(
            mask=checked_mask(mask), set_area_to_bounds=set_cond_area != "default", mask_strength=strength
        )
    if timesteps is not None:
        values["start_percent"], values["end_percent"] = _timesteps(timesteps)
    for _, opts in out:
        opts.update(values)
    return out


@api.node(
    "ConditioningTimestepsRange",
    category="advanced/hooks",
    display_name="Timesteps Range",
    inputs=[
        api.Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
        api.Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[
        api.Output(api.TIMESTEPS_RANGE, "TIMESTEPS_RANGE"),
        api.Output(api.TIMESTEPS_RANGE, "BEFORE_RANGE"),
        api.Output(api.TIMESTEPS_RANGE, "AFTER_RANGE"),
    ],
    experimental=True,
)
def conditioning_timesteps_range(start_percent: float, end_percent: float):
    """The range, the part of the schedule before it and the part after it (fractions, 0 = first step)."""
    return ((start_percent, end_percent), (0.0, start_percent), (end_percent, 1.0))


@api.node(
    "ConditioningSetProperties",
    category="advanced/hooks/cond single",
    display_name="Cond Set Props",
    inputs=_props_inputs("cond_NEW"),
    outputs=[api.CONDITIONING],
    experimental=True,
)
def conditioning_set_properties(
    cond_NEW: Any,  # noqa: N803 - ComfyUI's input name
    strength: float,
    set_cond_area: str,
    mask: Any = None,
    hooks: Any = None,
    timesteps: Any = None,
):
    """Mask (with strength and area mode) and step range on a conditioning."""
    return (_set_props(cond_NEW, strength, set_cond_area, mask, timesteps, hooks),)


@api.node(
    "ConditioningSetPropertiesAndCombine",
    category="advanced/hooks/cond single",
    display_name="Cond Set Props Combine",
    inputs=_props_inputs("cond", "cond_NEW"),
    outputs=[api.CONDITIONING],
    experimental=True,
)
def conditioning_set_properties_and_combine(
    cond: Any,
    cond_NEW: Any,  # noqa: N803 - ComfyUI's input name
    strength: float,
    set_cond_area: str,
    mask: Any = None,
    hooks: Any = None,
    timesteps: Any = None,
):
    """`cond` followed by `cond_NEW` with the mask and step range set (as ConditioningCombine)."""
    return (_entries(cond) + _set_props(cond_NEW, strength, set_cond_area, mask, timesteps, hooks),)


@api.node(
    "PairConditioningSetProperties",
    category="advanced/hooks/cond pair",
    display_name="Cond Pair Set Props",
    inputs=_props_inputs("positive_NEW", "negative_NEW"),
    outputs=_PAIR_OUTPUTS,
    experimental=True,
)
def pair_conditioning_set_properties(
    positive_NEW: Any,  # noqa: N803 - ComfyUI's input name
    negative_NEW: Any,  # noqa: N803
    strength: float,
    set_cond_area: str,
    mask: Any = None,
    hooks: Any = None,
    timesteps: Any = None,
):
    """ConditioningSetProperties on a positive / negative pair."""
    return tuple(
        _set_props(c, strength, set_cond_area, mask, timesteps, hooks) for c in (positive_NEW, negative_NEW)
    )


@api.node(
    "PairConditioningSetPropertiesAndCombine",
    category="advanced/hooks/cond pair",
    display_name="Cond Pair Set Props Combine",
    inputs=_props_inputs("positive", "negative", "positive_NEW", "negative_NEW"),
    outputs=_PAIR_OUTPUTS,
    experimental=True,
)
def pair_conditioning_set_properties_and_combine(
    positive: Any,
    negative: Any,
    positive_NEW: Any,  # noqa: N803 - ComfyUI's input name
    negative_NEW: Any,  # noqa: N803
    strength: float,
    set_cond_area: str,
    mask: Any = None,
    hooks: Any = None,
    timesteps: Any = None,
):
    """ConditioningSetPropertiesAndCombine on a positive / negative pair."""
    return tuple(
        _entries(old) + _set_props(new, strength, set_cond_area, mask, timesteps, hooks)
        for old, new in ((positive, positive_NEW), (negative, negative_NEW))
    )


@api.node(
    "PairConditioningCombine",
    category="advanced/hooks/cond pair",
    display_name="Cond Pair Combine",
    inputs=[
        api.Input("positive_A", api.CONDITIONING),
        api.Input("negative_A", api.CONDITIONING),
        api.Input("positive_B", api.CONDITIONING),
        api.Input("negative_B", api.CONDITIONING),
    ],
    outputs=_PAIR_OUTPUTS,
    experimental=True,
)
def pair_conditioning_combine(positive_A: Any, negative_A: Any, positive_B: Any, negative_B: Any):  # noqa: N803
    """ConditioningCombine on both sides: A's entries followed by B's."""
    return (_entries(positive_A) + _entries(positive_B), _entries(negative_A) + _entries(negative_B))


def _set_default(conditioning: Any, hooks: Any) -> list[list[Any]]:
    out = H.with_hooks(_entries(conditioning), _hooks(hooks))
    for _, opts in out:
        opts["default"] = True
    return out


@api.node(
    "ConditioningSetDefaultCombine",
    category="advanced/hooks/cond single",
    display_name="Cond Set Default Combine",
    inputs=[
        api.Input("cond", api.CONDITIONING),
        api.Input("cond_DEFAULT", api.CONDITIONING),
        api.Input("hooks", api.HOOKS, optional=True),
    ],
    outputs=[api.CONDITIONING],
    experimental=True,
)
def conditioning_set_default_combine(cond: Any, cond_DEFAULT: Any, hooks: Any = None):  # noqa: N803
    """`cond` followed by `cond_DEFAULT` marked as default: while sampling it weighs 1 minus the weights of
    the side's other active entries (floored at 0), so it fills what they leave uncovered."""
    return (_entries(cond) + _set_default(cond_DEFAULT, hooks),)


@api.node(
    "PairConditioningSetDefaultCombine",
    category="advanced/hooks/cond pair",
    display_name="Cond Pair Set Default Combine",
    inputs=[
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("positive_DEFAULT", api.CONDITIONING),
        api.Input("negative_DEFAULT", api.CONDITIONING),
        api.Input("hooks", api.HOOKS, optional=True),
    ],
    outputs=_PAIR_OUTPUTS,
    experimental=True,
)
def pair_conditioning_set_default_combine(
    positive: Any,
    negative: Any,
    positive_DEFAULT: Any,  # noqa: N803 - ComfyUI's input name
    negative_DEFAULT: Any,  # noqa: N803
    hooks: Any = None,
):
    """ConditioningSetDefaultCombine on a positive / negative pair."""
    return (
        _entries(positive) + _set_default(positive_DEFAULT, hooks),
        _entries(negative) + _set_default(negative_DEFAULT, hooks),
    )


@api.node(
    "SetClipHooks",
    category="advanced/hooks/clip",
    display_name="Set CLIP Hooks",
    inputs=[
        api.Input("clip", api.CLIP),
        api.Boolean("apply_to_conds", True),
        api.Boolean("schedule_clip", False),
        api.Input("hooks", api.HOOKS, optional=True),
    ],
    outputs=[api.CLIP],
    experimental=True,
)
def set_clip_hooks(clip: Any, apply_to_conds: bool, schedule_clip: bool, hooks: Any = None):
    """A CLIP clone whose text encodings use the hooks' text-encoder patches (strength_clip; with
    schedule_clip one encoding per keyframe range, limited to that range of the steps, else the
    keyframes are ignored) and, with apply_to_conds, carry the hooks for sampling."""
    if _hooks(hooks) is None:
        return (clip,)
    c = clip.clone()
    group = hooks if schedule_clip else hooks.with_keyframes(None)
    c.clip_hooks = H.ClipHooks(group, hooks if apply_to_conds else None, schedule=schedule_clip)
    return (c,)


NODES = [
    conditioning_timesteps_range,
    conditioning_set_properties,
    conditioning_set_properties_and_combine,
    pair_conditioning_set_properties,
    pair_conditioning_set_properties_and_combine,
    pair_conditioning_combine,
    conditioning_set_default_combine,
    pair_conditioning_set_default_combine,
    set_clip_hooks,
]
