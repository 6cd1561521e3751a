"""ComfyUI's hook-conditioning nodes that work without hooks: ConditioningTimestepsRange and the
Cond (Pair) Set Props / Set Props Combine / Pair Combine nodes (mask, strength and step range on
conditionings, optionally combined with others).

Their optional `hooks` input takes ComfyUI's HOOKS (scheduled LoRA / model patches per conditioning):
diffgraph has no node that makes one yet (CreateHookLora & co. are missing), so a HOOKS value given to
them is refused, naming what is missing. The option keys are those of ConditioningSetMask and
ConditioningSetTimestepRange ("mask", "set_area_to_bounds", "mask_strength", "start_percent",
"end_percent"), which the guided denoiser reads.
"""

from __future__ import annotations

from typing import Any

from engine import api

from ._image_ops import checked_mask
from .conditioning import _entries


class UnsupportedHooksError(NotImplementedError):
    """A HOOKS value reached a node: diffgraph cannot apply hooks yet."""


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


def _no_hooks(node_type: str, hooks: Any) -> None:
    if hooks is not None:
        raise UnsupportedHooksError(
            f"{node_type}: hooks (scheduled LoRA / model patches per conditioning) are not supported by "
            "diffgraph yet; disconnect the hooks input"
        )


def _timesteps(value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"timesteps must be a TIMESTEPS_RANGE (start_percent, end_percent), got {value!r}")
    return float(value[0]), float(value[1])


def _set_props(
    conditioning: Any, strength: float, set_cond_area: str, mask: Any, timesteps: Any
) -> list[list[Any]]:
    """ComfyUI's set_conds_props for one conditioning: the mask options only when a mask is given (then
    with its strength), the step range only when one is given."""
    out = _entries(conditioning)
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
    _no_hooks("ConditioningSetProperties", hooks)
    return (_set_props(cond_NEW, strength, set_cond_area, mask, timesteps),)


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
    _no_hooks("ConditioningSetPropertiesAndCombine", hooks)
    return (_entries(cond) + _set_props(cond_NEW, strength, set_cond_area, mask, timesteps),)


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
    _no_hooks("PairConditioningSetProperties", hooks)
    return tuple(
        _set_props(c, strength, set_cond_area, mask, timesteps) for c in (positive_NEW, negative_NEW)
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
    _no_hooks("PairConditioningSetPropertiesAndCombine", hooks)
    return tuple(
        _entries(old) + _set_props(new, strength, set_cond_area, mask, timesteps)
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


NODES = [
    conditioning_timesteps_range,
    conditioning_set_properties,
    conditioning_set_properties_and_combine,
    pair_conditioning_set_properties,
    pair_conditioning_set_properties_and_combine,
    pair_conditioning_combine,
]
