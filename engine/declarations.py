"""Node declarations: the data a node type is made of (inputs, outputs, hooks) and the `node` decorator.

The engine's own layers (registry, graph, execution, plugins) import these from here; node packs reach
them through `engine.api`, which re-exports them with the rest of the public node surface. Nothing here
imports torch or any other layer of the engine except the socket type names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from engine import types as T

# Returned by a fingerprint hook to say "never reuse a cached result" (ComfyUI's IS_CHANGED = NaN).
ALWAYS_CHANGED: Any = float("nan")


@dataclass(frozen=True)
class FileChoices:
    """Combo choices that are the files in a model/input folder, resolved when the schema is asked for.

    `kind` is a folder kind such as "checkpoints", "loras" or "input"; the list is read at schema and
    validation time from the runtime's folder configuration, so new files appear without a restart.
    """

    kind: str
    extensions: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RuntimeChoices:
    """Combo choices a runtime service supplies, resolved when the schema is asked for or a prompt is
    validated: "samplers" and "schedulers" are the runtime's sampling library, so a sampler a plugin
    registers shows up in every sampler combo (KSampler, KSamplerSelect...) and in /object_info."""

    kind: str


DynamicChoices = FileChoices | RuntimeChoices
ChoicesSpec = Sequence[str] | Callable[[], Sequence[str]] | DynamicChoices
ChoicesResolver = Callable[[DynamicChoices], list[str]]

SAMPLER_CHOICES = RuntimeChoices("samplers")
SCHEDULER_CHOICES = RuntimeChoices("schedulers")


@dataclass(frozen=True)
class Input:
    """One input of a node: a socket, or a widget for INT/FLOAT/STRING/BOOLEAN/COMBO values.

    Widget inputs can also be linked (ComfyUI's "convert widget to input"). `force_input=True` makes a
    primitive type socket-only. `lazy=True` inputs are evaluated only when `check_lazy` asks for them.
    """

    name: str
    type: str
    optional: bool = False
    default: Any = None
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | bool | None = None
    multiline: bool = False
    choices: ChoicesSpec | None = None
    tooltip: str | None = None
    lazy: bool = False
    force_input: bool = False
    control_after_generate: bool = False
    display: str | None = None  # "number" | "slider" for numeric widgets
    extra: Mapping[str, Any] = field(default_factory=dict)  # other widget options, published as-is

    @property
    def is_widget(self) -> bool:
        return self.type in T.WIDGET_TYPES and not self.force_input

    def resolved_choices(self, resolve: ChoicesResolver | None) -> list[str] | None:
        if self.choices is None:
            return None
        if isinstance(self.choices, FileChoices | RuntimeChoices):
            return resolve(self.choices) if resolve else []
        if callable(self.choices):
            return list(self.choices())
        return list(self.choices)


def Int(
    name: str, default: int = 0, *, min: int = -(2**63), max: int = 2**63 - 1, step: int = 1, **kw: Any
) -> Input:
    return Input(name, T.INT, default=default, min=min, max=max, step=step, **kw)


def Float(
    name: str, default: float = 0.0, *, min: float = -1e9, max: float = 1e9, step: float = 0.01, **kw: Any
) -> Input:
    return Input(name, T.FLOAT, default=default, min=min, max=max, step=step, **kw)


def String(name: str, default: str = "", *, multiline: bool = False, **kw: Any) -> Input:
    return Input(name, T.STRING, default=default, multiline=multiline, **kw)


def Boolean(name: str, default: bool = False, **kw: Any) -> Input:
    return Input(name, T.BOOLEAN, default=default, **kw)


def Combo(name: str, choices: ChoicesSpec, default: str | None = None, **kw: Any) -> Input:
    return Input(name, T.COMBO, choices=choices, default=default, **kw)


@dataclass(frozen=True)
class Output:
    """One output socket: its type, display name, and whether it produces a list (OUTPUT_IS_LIST)."""

    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


@dataclass
class NodeOutput:
    """What a node function may return instead of a plain tuple: values plus UI data (e.g. images)."""

    values: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None

    def __init__(self, *values: Any, ui: dict[str, Any] | None = None):
        self.values = tuple(values)
        self.ui = ui


# Hidden inputs the executor fills in (ComfyUI's "hidden" section); the classic adapter maps a pack's
# hidden names onto the same set.
HIDDEN_PROMPT = "PROMPT"
HIDDEN_EXTRA_PNGINFO = "EXTRA_PNGINFO"
HIDDEN_UNIQUE_ID = "UNIQUE_ID"
HIDDEN_KINDS = frozenset(
    {HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO, HIDDEN_UNIQUE_ID, "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG"}
)


@dataclass(frozen=True)
class NodeDefinition:
    """Everything the engine knows about a node type. Built by `node(...)` or the classic adapter."""

    node_type: str
    function: Callable[..., Any]
    inputs: tuple[Input, ...] = ()
    outputs: tuple[Output, ...] = ()
    category: str = "utils"
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    version: str = "1"
    fingerprint: Callable[..., Any] | None = None
    validate: Callable[..., Any] | None = None
    # Inputs whose built-in checks (min/max/choices) `validate` takes over (ComfyUI: VALIDATE_INPUTS args).
    validate_replaces: frozenset[str] = frozenset()
    check_lazy: Callable[..., Any] | None = None
    input_is_list: bool = False
    hidden: Mapping[str, str] = field(default_factory=dict)  # parameter name -> hidden kind
    wants_context: bool = False
    deprecated: bool = False
    experimental: bool = False
    python_module: str = "nodes"
    # For classic packs, INPUT_TYPES is re-read on every schema request (their choices may change).
    inputs_provider: Callable[[], tuple[Input, ...]] | None = None
    extra_schema: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the definition calls the node function, which keeps decorated functions testable."""
        return self.function(*args, **kwargs)

    @property
    def title(self) -> str:
        return self.display_name or self.node_type

    def current_inputs(self) -> tuple[Input, ...]:
        return self.inputs_provider() if self.inputs_provider is not None else self.inputs

    def with_source(self, python_module: str) -> NodeDefinition:
        return replace(self, python_module=python_module)


def node(
    node_type: str,
    *,
    inputs: Iterable[Input] = (),
    outputs: Iterable[Output | str] = (),
    category: str = "utils",
    display_name: str | None = None,
    description: str = "",
    output_node: bool = False,
    version: str = "1",
    fingerprint: Callable[..., Any] | None = None,
    validate: Callable[..., Any] | None = None,
    check_lazy: Callable[..., Any] | None = None,
    input_is_list: bool = False,
    hidden: Mapping[str, str] | None = None,
    deprecated: bool = False,
    experimental: bool = False,
) -> Callable[[Callable[..., Any]], NodeDefinition]:
    """Declare a native node. The decorated function receives its inputs as keyword arguments.

    If the function has a parameter named `context`, it also receives the `ExecutionContext`
    (progress reporting, interrupt checks, folders, models). It returns a tuple with one value per
    output, or a `NodeOutput` carrying UI data as well.
    """

    def decorate(function: Callable[..., Any]) -> NodeDefinition:
        wants_context = "context" in inspect.signature(function).parameters
        return NodeDefinition(
            node_type=node_type,
            function=function,
            inputs=tuple(inputs),
            outputs=tuple(o if isinstance(o, Output) else Output(o) for o in outputs),
            category=category,
            display_name=display_name,
            description=description or inspect.getdoc(function) or "",
            output_node=output_node,
            version=version,
            fingerprint=fingerprint,
            validate=validate,
            check_lazy=check_lazy,
            input_is_list=input_is_list,
            hidden=dict(hidden or {}),
            wants_context=wants_context,
            deprecated=deprecated,
            experimental=experimental,
        )

    return decorate
