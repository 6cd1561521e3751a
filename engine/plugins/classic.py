"""The one adapter that turns a ComfyUI-classic node class into a NodeDefinition.

Classic classes declare `INPUT_TYPES()` (required/optional/hidden), `RETURN_TYPES`, `RETURN_NAMES`,
`FUNCTION`, `CATEGORY`, `OUTPUT_NODE`, `IS_CHANGED`, `VALIDATE_INPUTS`, `INPUT_IS_LIST`,
`OUTPUT_IS_LIST`, `check_lazy_status`, `DESCRIPTION`. After adaptation the executor cannot tell them
from native nodes. `INPUT_TYPES()` is re-read whenever the schema is asked for, because classic packs
compute their choices there (e.g. a folder listing).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from engine import types as T
from engine.api import Input, NodeDefinition, Output
from engine.errors import NodeDefinitionError

_HIDDEN_KIND_NAMES = {"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG"}
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


def _read_input_types(node_type: str, cls: type) -> tuple[tuple[Input, ...], dict[str, str]]:
    try:
        declared = cls.INPUT_TYPES()  # type: ignore[attr-defined]
    except Exception as exc:
        raise NodeDefinitionError(node_type, f"INPUT_TYPES() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(declared, dict):
        raise NodeDefinitionError(
            node_type, "INPUT_TYPES() must return a dict with 'required'/'optional'/'hidden'"
        )
    inputs: list[Input] = []
    for section, optional in (("required", False), ("optional", True)):
        for name, raw in (declared.get(section) or {}).items():
            inputs.append(_parse_input(node_type, name, raw, optional))
    hidden: dict[str, str] = {}
    for name, kind in (declared.get("hidden") or {}).items():
        kind_name = kind if isinstance(kind, str) else str(kind)
        hidden[name] = kind_name if kind_name in _HIDDEN_KIND_NAMES else "UNKNOWN"
        if hidden[name] == "UNKNOWN":
            raise NodeDefinitionError(node_type, f"hidden input {name!r} has unknown kind {kind!r}")
    return tuple(inputs), hidden


def adapt_classic_node(node_type: str, cls: type, display_name: str | None = None) -> NodeDefinition:
    """Build the NodeDefinition for one entry of a pack's NODE_CLASS_MAPPINGS."""
    if not inspect.isclass(cls):
        raise NodeDefinitionError(node_type, f"NODE_CLASS_MAPPINGS value {cls!r} is not a class")
    function_name = getattr(cls, "FUNCTION", None)
    if not isinstance(function_name, str) or not callable(getattr(cls, function_name, None)):
        raise NodeDefinitionError(
            node_type, f"FUNCTION {function_name!r} does not name a method of {cls.__name__}"
        )
    inputs, hidden = _read_input_types(node_type, cls)
    return_types = tuple(getattr(cls, "RETURN_TYPES", ()))
    names = tuple(getattr(cls, "RETURN_NAMES", ()) or ())
    is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", ()) or ())
    tooltips = tuple(getattr(cls, "OUTPUT_TOOLTIPS", ()) or ())
    outputs = tuple(
        Output(
            type=(t if isinstance(t, str) else T.COMBO),
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
        return getattr(instance(), function_name)(**kwargs)

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
        check_lazy=check_lazy if any(s.lazy for s in inputs) else None,
        input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
        hidden=hidden,
        deprecated=bool(getattr(cls, "DEPRECATED", False)),
        experimental=bool(getattr(cls, "EXPERIMENTAL", False)),
        inputs_provider=provider,
    )


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
