"""Which input each of a UI node's `widgets_values` belongs to, in every form ComfyUI's canvas has saved.

Facts of the format (ComfyUI's canvas, old and current):

- Positions: the widget inputs in declaration order, required first. After a seed-like widget (an input
  flagged `control_after_generate`, or an INT named seed / noise_seed) the canvas stores one extra value,
  the control mode. A node with a media-upload combo (`image_upload` ...) gets an "upload" button added
  after all its required inputs, and older canvases store a placeholder value for it there.
- The control mode is "fixed" / "increment" / "decrement" / "randomize". Canvases of March-April 2023
  stored it as a toggle: `true` (randomize) or `false` (fixed); files saved before a node had the
  control have no value there at all.
- Canvases of some versions also gave `forceInput` inputs a widget and saved a value (and a control
  value) for them; today's canvas drops those values when it loads such a file.
- `widgets_values` may be an object keyed by widget name (some canvases and plugins), an array-like
  object (`{"0": .., "length": n}`), or be absent next to a `widgets_values_named` object.
- When loading, the canvas rewrites a few values the backend renamed: KSampler sampler names saved with
  a `sample_` prefix (January 2023), `euler_pp` / `euler_ancestral_pp` (June 2024: the plain sampler
  at twice the cfg), and a combo saved as null takes its first choice.

Where ComfyUI's canvas had a per-user setting (e.g. "control before generate") it is not in the file,
so the stored widget value is the one that runs, as with the default "after" setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine import types as T
from engine.declarations import Input

CONTROL_AFTER_GENERATE_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
# The canvas adds the control widget to inputs flagged in the schema, and by name to these INTs.
SEED_WIDGET_NAMES = frozenset({"seed", "noise_seed"})
MEDIA_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
SAMPLER_NODE_TYPES = frozenset({"KSampler", "KSamplerAdvanced"})
# Sampler names of June 2024 that the canvas maps to the plain sampler with the cfg doubled.
DOUBLED_CFG_SAMPLERS = {"euler_pp": "euler", "euler_ancestral_pp": "euler_ancestral"}

VALUE, CONTROL, UPLOAD, FORCED = "value", "control", "upload", "forced"


@dataclass(frozen=True, slots=True)
class WidgetSlot:
    """One position in `widgets_values`: an input's value or a canvas-only extra value."""

    input_name: str | None  # None for the upload placeholder
    kind: str = VALUE  # VALUE, CONTROL (after input_name), UPLOAD, FORCED (a forceInput's old value)


def _has_control(spec: Input) -> bool:
    return spec.control_after_generate or (spec.type == T.INT and spec.name in SEED_WIDGET_NAMES)


def _has_upload(spec: Input) -> bool:
    return spec.type == T.COMBO and any(spec.extra.get(flag) for flag in MEDIA_UPLOAD_FLAGS)


def widget_layout(
    inputs: tuple[Input, ...], *, uploads: bool = True, forced: bool = False
) -> list[WidgetSlot]:
    """The positions of `widgets_values` for a node with these inputs, as the canvas lays them out.

    `uploads=False` leaves out the upload placeholder; `forced=True` adds the values older canvases
    saved for forceInput inputs of widget types."""
    slots: list[WidgetSlot] = []
    for group in ([s for s in inputs if not s.optional], [s for s in inputs if s.optional]):
        for spec in group:
            if spec.is_widget:
                slots.append(WidgetSlot(spec.name))
            elif forced and spec.force_input and spec.type in T.WIDGET_TYPES:
                slots.append(WidgetSlot(spec.name, FORCED))
            else:
                continue
            if _has_control(spec):
                slots.append(WidgetSlot(spec.name, CONTROL))
        required_upload = any(_has_upload(s) for s in group if not s.optional)
        if uploads and required_upload:
            slots.append(WidgetSlot(None, UPLOAD))
    return slots


def _is_control_value(value: Any, next_slot: WidgetSlot | None, by_name: dict[str, Input]) -> bool:
    if isinstance(value, str):  # (values may be lists or dicts, which no set lookup takes)
        return value in CONTROL_AFTER_GENERATE_VALUES
    if not isinstance(value, bool):
        return False
    # A 2023 toggle, unless the file predates the control and the boolean is the next widget's value.
    next_spec = by_name.get(next_slot.input_name) if next_slot and next_slot.input_name else None
    return next_spec is None or next_spec.type != T.BOOLEAN


def _align(values: list[Any], specs: tuple[Input, ...]) -> dict[str, Any]:
    """Values by input name. An exact-length layout is taken as is (newest first); otherwise the full
    layout is walked, skipping a control position whose value is not a control mode (the file predates
    the control) and stopping where the values end (the file predates the later widgets)."""
    by_name = {s.name: s for s in specs}
    full = widget_layout(specs)
    candidates = [full, widget_layout(specs, uploads=False)]
    if any(s.force_input and s.type in T.WIDGET_TYPES for s in specs):
        candidates += [widget_layout(specs, forced=True), widget_layout(specs, uploads=False, forced=True)]
    exact = next((layout for layout in candidates if len(layout) == len(values)), None)
    if exact is not None:
        return {
            s.input_name: v for s, v in zip(exact, values, strict=True) if s.kind == VALUE and s.input_name
        }
    result: dict[str, Any] = {}
    position = 0
    for index, slot in enumerate(full):
        if position >= len(values):
            break
        value = values[position]
        if slot.kind == CONTROL:
            following = full[index + 1] if index + 1 < len(full) else None
            if _is_control_value(value, following, by_name):
                position += 1
            continue
        position += 1
        if slot.kind == VALUE and slot.input_name is not None:
            result[slot.input_name] = value
    return result


def _raw_values(raw: dict[str, Any]) -> tuple[list[Any] | None, dict[str, Any] | None]:
    """(positional values, values by name) of a UI node; one of them is None."""
    values = raw.get("widgets_values")
    if isinstance(values, list):
        return values, None
    if isinstance(values, dict):
        length = values.get("length")
        if isinstance(length, int) and not isinstance(length, bool) and 0 <= length <= 10_000:
            return [values.get(str(i)) for i in range(length)], None  # an array saved as an object
        return None, values
    named = raw.get("widgets_values_named")
    if isinstance(named, dict):
        return None, named
    return [], None


def _renamed_sampler_values(node_type: str, values: dict[str, Any]) -> None:
    if node_type not in SAMPLER_NODE_TYPES or not isinstance(values.get("sampler_name"), str):
        return
    name = values["sampler_name"]
    if name.startswith("sample_"):
        values["sampler_name"] = name = name[len("sample_") :]
    if name in DOUBLED_CFG_SAMPLERS:
        values["sampler_name"] = DOUBLED_CFG_SAMPLERS[name]
        if isinstance(values.get("cfg"), int | float) and not isinstance(values["cfg"], bool):
            values["cfg"] = values["cfg"] * 2.0


# The values ComfyUI's frontend gives a STRING / BOOLEAN widget declared without a default.
_UNDECLARED_DEFAULTS: dict[str, Any] = {T.STRING: "", T.BOOLEAN: False}


def read_widget_values(
    node_type: str,
    raw: dict[str, Any],
    specs: tuple[Input, ...],
    choices_for: Callable[[Input], list[str] | None],
) -> dict[str, Any]:
    """The widget inputs' values of one UI node, legacy forms normalised, missing ones defaulted."""
    positional, named = _raw_values(raw)
    by_name = {s.name: s for s in specs}
    if named is not None:
        result = {k: v for k, v in named.items() if k in by_name and by_name[k].is_widget}
    else:
        result = _align(list(positional or []), specs)
    _renamed_sampler_values(node_type, result)
    for spec in specs:
        if not spec.is_widget:
            continue
        if spec.type == T.COMBO and spec.name in result and result[spec.name] is None:
            choices = choices_for(spec) or []
            if choices:
                result[spec.name] = choices[0]
        # Widgets the file has no value for (saved before the widget existed) take their defaults; one
        # declared without a default takes what ComfyUI's frontend gives it (a combo its first choice).
        if spec.name not in result and spec.default is not None:
            result[spec.name] = spec.default
        elif spec.name not in result:
            fallback = _UNDECLARED_DEFAULTS.get(spec.type)
            if spec.type == T.COMBO:
                fallback = next(iter(choices_for(spec) or []), None)
            if fallback is not None:
                result[spec.name] = fallback
    return result
