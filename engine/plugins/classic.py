"""The one adapter that turns a ComfyUI-classic node class into a NodeDefinition.

Classic classes declare `INPUT_TYPES()` (required/optional/hidden), `RETURN_TYPES`, `RETURN_NAMES`,
`FUNCTION`, `CATEGORY`, `OUTPUT_NODE`, `IS_CHANGED`, `VALIDATE_INPUTS`, `INPUT_IS_LIST`,
`OUTPUT_IS_LIST`, `check_lazy_status`, `DESCRIPTION`. After adaptation the executor cannot tell them
from native nodes. `INPUT_TYPES()` is re-read whenever the schema is asked for, because classic packs
compute their choices there (e.g. a folder listing).

Classic packs are read as leniently as ComfyUI reads them (the built-in pack stays strict): wildcard
types become "*", unknown hidden kinds are dropped, and declarations ComfyUI tolerates (a default outside
min/max or the choices, a name both required and optional) are repaired with a warning in `warnings`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from engine import types as T
from engine.declarations import HIDDEN_KINDS, Input, NodeDefinition, NodeOutput, Output
from engine.errors import NodeDefinitionError

# The registry's own per-input check, to know whether a classic declaration needs repairing.
from engine.registry import _check_input as check_input

# Set on every classic node's function: the validator passes the prompt's undeclared linked inputs through,
# as ComfyUI does for any pack node (its frontend adds sockets to **kwargs nodes dynamically), and with
# ANY_INPUT_ALL, when the "optional" dict claims every key (`__contains__` always True), undeclared
# constants too. The values are engine/graph/validate.py's (the plugins layer names them again here).
ACCEPTS_ANY_INPUT = "accepts_any_input"
ANY_INPUT_ALL = "all"
ANY_INPUT_LINKED = "linked"
# A node class with a callable of this name builds its own NodeDefinition: hook(node_type, display_name,
# warnings). The compatibility layer's V3 base class (io.ComfyNode) has one; this layer knows only the name.
DEFINITION_HOOK = "__diffgraph_definition__"
# A key no real declaration uses, to probe wildcard types and catch-all dicts.
_PROBE = "\x00diffgraph-probe"

_OPTION_FIELDS = {
    "default",
    "min",
    "max",
    "step",
    "round",
    "multiline",
    "tooltip",
    "lazy",
    "forceInput",
    "display",
}


def _parse_input(node_type: str, name: str, raw: Any, optional: bool) -> Input:
    if isinstance(raw, str):
        raw = (raw,)
    if not isinstance(raw, list | tuple) or not raw:
        raise NodeDefinitionError(
            node_type, f"INPUT_TYPES entry {name!r} must be a tuple like ('INT', {{...}})"
        )
    kind, options = raw[0], (raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {})
    choices: list[Any] | None = None
    if isinstance(kind, str):  # first: a wildcard's `==` may be overridden to match anything too
        kind = plain_type(kind)
    if isinstance(kind, list | tuple):
        choices, kind = list(kind), T.COMBO
    elif kind == T.COMBO:
        choices = list(options.get("options", []))
    if not isinstance(kind, str):
        raise NodeDefinitionError(node_type, f"input {name!r} has a type {kind!r} that is not a string")
    extra = {
        k: v
        for k, v in options.items()
        if k not in _OPTION_FIELDS and k not in ("options", "control_after_generate")
    }
    return Input(
        name=name,
        type=kind,
        optional=optional,
        default=options.get("default"),
        min=options.get("min"),
        max=options.get("max"),
        step=options.get("step"),
        round=options.get("round"),
        multiline=bool(options.get("multiline", False)),
        choices=choices,
        tooltip=options.get("tooltip"),
        lazy=bool(options.get("lazy", False)),
        force_input=bool(options.get("forceInput", False)),
        control_after_generate=bool(options.get("control_after_generate", False)) and kind == T.INT,
        display=options.get("display"),
        extra=extra,
    )


def plain_type(kind: str) -> str:
    """A declared socket type as a plain str. Packs write wildcards as str subclasses whose `!=` is always
    False (ComfyUI compares types with `!=`, so they match anything): those become "*", which this engine
    matches with anything; other subclasses become their plain text."""
    if type(kind) is str:
        return kind
    if not (kind != _PROBE):  # noqa: SIM202 - the hack overrides only __ne__, so `!=` is the test
        return T.ANY
    return str.__str__(kind)


def _read_input_types(
    node_type: str, cls: type, warnings: list[str] | None = None
) -> tuple[tuple[Input, ...], dict[str, str], bool]:
    """The inputs, the hidden inputs (name -> kind), and whether "optional" claims any key."""
    try:
        declared = cls.INPUT_TYPES()  # type: ignore[attr-defined]
    except Exception as exc:
        raise NodeDefinitionError(node_type, f"INPUT_TYPES() raised {type(exc).__name__}: {exc}") from exc
    return parse_input_types(node_type, declared, warnings)


def parse_input_types(
    node_type: str, declared: Any, warnings: list[str] | None = None
) -> tuple[tuple[Input, ...], dict[str, str], bool]:
    """What `_read_input_types` gives, from an INPUT_TYPES() dict already read (the V3 adapter builds one)."""
    if not isinstance(declared, dict):
        raise NodeDefinitionError(
            node_type, "INPUT_TYPES() must return a dict with 'required'/'optional'/'hidden'"
        )
    notes: list[str] = warnings if warnings is not None else []
    inputs: list[Input] = []
    seen: set[str] = set()
    for section, optional in (("required", False), ("optional", True)):
        for name, raw in (declared.get(section) or {}).items():
            if name in seen:  # ComfyUI looks an input up in "required" first, so that one wins
                notes.append(f"{node_type}: input {name!r} is both required and optional; it is required")
                continue
            seen.add(name)
            inputs.append(_tolerated(node_type, _parse_input(node_type, name, raw, optional), notes))
    hidden: dict[str, str] = {}
    for name, kind in (declared.get("hidden") or {}).items():
        kind_name = kind if isinstance(kind, str) else str(kind)
        if kind_name not in HIDDEN_KINDS:  # ComfyUI fills in only the kinds it knows and skips the rest
            notes.append(f"{node_type}: hidden input {name!r} has the unknown kind {kind_name!r}; ignored")
            continue
        hidden[name] = kind_name
    optional_section = declared.get("optional")
    any_key = isinstance(optional_section, dict) and _PROBE in optional_section
    return tuple(inputs), hidden, any_key


def _tolerated(node_type: str, spec: Input, warnings: list[str]) -> Input:
    """The input as declared if the registry accepts it; else with the default ComfyUI would tolerate
    repaired (clamped into min/max, or dropped), and a warning saying so."""
    try:
        check_input(node_type, spec)
        return spec
    except NodeDefinitionError as exc:
        original = exc
    repaired = replace(spec, default=None)
    if (
        spec.type in (T.INT, T.FLOAT)
        and isinstance(spec.default, int | float)
        and not isinstance(spec.default, bool)
    ):
        clamped = spec.default
        if spec.min is not None and clamped < spec.min:
            clamped = spec.min
        if spec.max is not None and clamped > spec.max:
            clamped = spec.max
        repaired = replace(spec, default=clamped)
    try:
        check_input(node_type, repaired)
    except NodeDefinitionError:
        raise original from None
    fix = "the default is dropped" if repaired.default is None else f"using the default {repaired.default!r}"
    warnings.append(f"{original}; {fix}")
    return repaired


def adapt_classic_node(
    node_type: str, cls: type, display_name: str | None = None, warnings: list[str] | None = None
) -> NodeDefinition:
    """Build the NodeDefinition for one entry of a pack's NODE_CLASS_MAPPINGS; what was tolerated in its
    declaration is appended to `warnings`. A class that builds its own definition (ComfyUI's V3 nodes, through
    the DEFINITION_HOOK the compatibility layer gives them) is asked for it."""
    if not inspect.isclass(cls):
        raise NodeDefinitionError(node_type, f"NODE_CLASS_MAPPINGS value {cls!r} is not a class")
    hook = getattr(cls, DEFINITION_HOOK, None)
    if callable(hook):
        return _hooked_definition(node_type, cls, hook, display_name, warnings)
    function_name = getattr(cls, "FUNCTION", None)
    if not isinstance(function_name, str) or not callable(getattr(cls, function_name, None)):
        raise NodeDefinitionError(
            node_type, f"FUNCTION {function_name!r} does not name a method of {cls.__name__}"
        )
    inputs, hidden, any_key = _read_input_types(node_type, cls, warnings)
    return_types = tuple(getattr(cls, "RETURN_TYPES", ()))
    names = tuple(getattr(cls, "RETURN_NAMES", ()) or ())
    is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", ()) or ())
    tooltips = tuple(getattr(cls, "OUTPUT_TOOLTIPS", ()) or ())
    outputs = tuple(
        Output(
            type=(plain_type(t) if isinstance(t, str) else T.COMBO),
            name=names[i] if i < len(names) else None,
            is_list=bool(is_list[i]) if i < len(is_list) else False,
            tooltip=tooltips[i] if i < len(tooltips) else None,
        )
        for i, t in enumerate(return_types)
    )
    # ComfyUI keeps one instance per node; these classes are stateless in practice, so one per type.
    instance_holder: list[Any] = []

    def instance() -> Any:
        if not instance_holder:
            instance_holder.append(cls())
        return instance_holder[0]

    def function(**kwargs: Any) -> Any:
        # ComfyUI awaits a FUNCTION that is a coroutine function.
        return shape_result(run_awaitable(getattr(instance(), function_name)(**kwargs)), outputs)

    setattr(function, ACCEPTS_ANY_INPUT, ANY_INPUT_ALL if any_key else ANY_INPUT_LINKED)

    validate, replaces = _classic_validate(cls, instance)
    fingerprint = _bound_hook(cls, "IS_CHANGED", instance)
    check_lazy = _bound_hook(cls, "check_lazy_status", instance)

    def provider() -> tuple[Input, ...]:
        return _read_input_types(node_type, cls)[0]

    return NodeDefinition(
        node_type=node_type,
        function=function,
        inputs=inputs,
        outputs=outputs,
        category=str(getattr(cls, "CATEGORY", "custom")),
        display_name=display_name,
        description=str(getattr(cls, "DESCRIPTION", "") or ""),
        output_node=bool(getattr(cls, "OUTPUT_NODE", False)),
        fingerprint=fingerprint,
        validate=validate,
        validate_replaces=replaces,
        check_lazy=_lazy_hook(check_lazy, inputs),
        input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
        hidden=hidden,
        deprecated=bool(getattr(cls, "DEPRECATED", False)),
        experimental=bool(getattr(cls, "EXPERIMENTAL", False)),
        inputs_provider=provider,
    )


def _hooked_definition(
    node_type: str, cls: type, hook: Callable[..., Any], display_name: str | None, warnings: list[str] | None
) -> NodeDefinition:
    try:
        definition = hook(node_type, display_name, warnings if warnings is not None else [])
    except NodeDefinitionError:
        raise
    except Exception as exc:
        raise NodeDefinitionError(node_type, f"its declaration raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(definition, NodeDefinition):
        raise NodeDefinitionError(node_type, f"{DEFINITION_HOOK} of {cls.__name__} gave {definition!r}")
    return definition


def _lazy_hook(hook: Callable[..., Any] | None, inputs: Sequence[Input]) -> Callable[..., Any] | None:
    """The check_lazy hook to register: none without lazy inputs; without a check_lazy_status, one that asks
    for nothing, since ComfyUI then never evaluates the lazy inputs."""
    if not any(spec.lazy for spec in inputs):
        return None
    return hook if hook is not None else _needs_nothing


def _needs_nothing(**_inputs: Any) -> list[str]:
    return []


def run_awaitable(value: Any) -> Any:
    """`value`, or its result if it is awaitable (packs' async node functions and entry points). Run on a
    fresh event loop; from inside a running loop (a thread that has one), on a thread of its own."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def shape_result(result: Any, outputs: Sequence[Output]) -> Any:
    """A classic return value in the shape the executor takes: {"ui", "result"} dicts and tuples become a
    NodeOutput with one value per output. ComfyUI keeps a short return short, and an input linked to a
    missing output then receives None; padding with None (one None for a list output) gives the same."""
    ui = None
    if isinstance(result, dict) and ("ui" in result or "result" in result) and "expand" not in result:
        values, ui = result.get("result"), result.get("ui")
        values = () if values is None else values
    elif isinstance(result, tuple | list):
        values = result
    else:
        return result  # the executor reports anything else
    if not isinstance(values, tuple | list):
        return result
    padded = [*values[: len(outputs)]]
    padded += [[None] if out.is_list else None for out in outputs[len(padded) :]]
    return NodeOutput(*padded, ui=ui)


def _bound_hook(cls: type, name: str, instance: Callable[[], Any]) -> Callable[..., Any] | None:
    if not callable(getattr(cls, name, None)):
        return None
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, classmethod | staticmethod):
        return getattr(cls, name)  # type: ignore[no-any-return]

    def call(**kwargs: Any) -> Any:
        return getattr(instance(), name)(**kwargs)

    call.__signature__ = inspect.signature(getattr(cls, name))  # type: ignore[attr-defined]
    return call


def _classic_validate(
    cls: type, instance: Callable[[], Any]
) -> tuple[Callable[..., Any] | None, frozenset[str]]:
    """VALIDATE_INPUTS returns True or an error string. Inputs it takes by name skip the built-in checks
    (ComfyUI's rule: such a node validates those inputs itself)."""
    hook = _bound_hook(cls, "VALIDATE_INPUTS", instance)
    if hook is None:
        return None, frozenset()
    params = inspect.signature(cls.VALIDATE_INPUTS).parameters  # type: ignore[attr-defined]
    replaces = frozenset(
        n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD and n != "self"
    )

    def validate(**kwargs: Any) -> Any:
        outcome = hook(**kwargs)
        if outcome is True or outcome is None:
            return None
        return str(outcome)

    validate.__signature__ = inspect.signature(hook)  # type: ignore[attr-defined]
    return validate, replaces
