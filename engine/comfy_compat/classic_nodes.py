"""ComfyUI-shaped classes for diffgraph's built-in nodes, and calling a node the way ComfyUI packs do.

ComfyUI packs reach the built-in nodes through `nodes` and `comfy_extras.*`: they call them
(`CLIPTextEncode().encode(clip, text)`, `nodes.common_ksampler(...)`), subclass them (adding an input via
`super().INPUT_TYPES()`), or look them up by name (`nodes.NODE_CLASS_MAPPINGS["KSampler"]`). Every such
class here is generated from the node's declaration in the runtime's registry:

* `INPUT_TYPES()` is the declaration in ComfyUI's classic shape (choices resolved when it is called, so
  folder listings and the sampler list are current); RETURN_TYPES / RETURN_NAMES / FUNCTION / CATEGORY /
  OUTPUT_NODE / DESCRIPTION as ComfyUI publishes them;
* the method named by FUNCTION (ComfyUI's name: `encode`, `load_checkpoint`, `sample`, ...) takes ComfyUI's
  positional / keyword arguments and runs the built-in node function with the context of the node running
  now (`running_context()`), or, outside a node, a context holding the runtime's services;
* it returns what ComfyUI returns: a tuple of the outputs, or `{"ui": ...}` for output nodes.

A subclass registered by a pack goes through the classic adapter like any classic class, so it runs
exactly like a pack's own node.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from engine import types as T
from engine.comfy_compat.comfy_node_facts import classes_of_module, comfy_nodes
from engine.declarations import Input, NodeDefinition, NodeOutput
from engine.execution.context import ExecutionContext, InterruptFlag, running_context

_UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
_LATENT_UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
_CROP = ["disabled", "center"]
# Class attributes of ComfyUI's built-in classes that packs read (ImageScale.upscale_methods...).
CLASS_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "ImageScale": {"upscale_methods": _UPSCALE, "crop_methods": _CROP},
    "ImageScaleBy": {"upscale_methods": _UPSCALE},
    "ImageScaleToTotalPixels": {"upscale_methods": _UPSCALE, "crop_methods": _CROP},
    "LatentUpscale": {"upscale_methods": _LATENT_UPSCALE, "crop_methods": _CROP},
    "LatentUpscaleBy": {"upscale_methods": _LATENT_UPSCALE},
    "LoadImageMask": {"_color_channels": ["alpha", "red", "green", "blue"]},
}

# The attribute of a generated class that names the node type it runs.
NODE_TYPE_ATTRIBUTE = "_diffgraph_node_type"


def _discard(_event: Any) -> None:
    """The event sink of a context made outside a node: nothing is listening."""


def invocation_context(services: Mapping[str, Any], node_type: str) -> ExecutionContext:
    """The context a built-in node called from pack code runs with: the running node's (its progress,
    interrupts and services), or outside any node (at a pack's import time, in a pack's own thread) one
    with the runtime's services and nowhere to report to."""
    running = running_context()
    if running is not None:
        return running
    return ExecutionContext(
        prompt_id="",
        node_id="",
        node_type=node_type,
        sink=_discard,
        interrupt=InterruptFlag(),
        services=services,
    )


def function_name(node_type: str) -> str:
    """ComfyUI's FUNCTION for a node type ("execute" for V3-only and unknown nodes)."""
    facts = comfy_nodes().get(node_type)
    return facts.function if facts is not None else "execute"


def argument_names(definition: NodeDefinition) -> list[str]:
    """The order ComfyUI's method takes a node's arguments in (its signature where known, e.g. VAEDecode's
    (vae, samples)), then the other inputs as declared: required, optional, hidden."""
    inputs = definition.current_inputs()
    declared = [s.name for s in inputs if not s.optional] + [s.name for s in inputs if s.optional]
    declared += list(definition.hidden)
    facts = comfy_nodes().get(definition.node_type)
    known = list(facts.arguments) if facts is not None and facts.arguments else []
    return known + [name for name in declared if name not in known]


def bind_arguments(
    definition: NodeDefinition, args: tuple[Any, ...], kwargs: dict[str, Any], registry: Any = None
) -> dict[str, Any]:
    """ComfyUI-style positional and keyword arguments as the node function's keywords: missing widget
    inputs take their declared default; arguments the function does not take (ComfyUI-only extras such as
    ControlNetApplyAdvanced's `extra_concat`) are dropped."""
    names = argument_names(definition)
    if len(args) > len(names):
        raise TypeError(f"{definition.node_type} takes {len(names)} arguments ({names}), got {len(args)}")
    bound = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key in bound:
            raise TypeError(f"{definition.node_type} got multiple values for argument {key!r}")
        bound[key] = value
    for spec in definition.current_inputs():
        if spec.name in bound:
            continue
        if spec.default is not None:
            bound[spec.name] = spec.default
        elif spec.type == T.COMBO and not spec.optional and registry is not None:
            choices = registry.choices_for(spec) or []
            if choices:  # ComfyUI's front end starts a combo at its first choice
                bound[spec.name] = choices[0]
    return _accepted(definition.function, bound)


def _accepted(function: Callable[..., Any], bound: dict[str, Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return bound
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return bound
    return {k: v for k, v in bound.items() if k in params and k != "context"}


def comfy_result(result: Any) -> Any:
    """A node function's result as ComfyUI's method returns it: the outputs as a tuple; `{"ui": ...}` for a
    node with UI data and no outputs (SaveImage); `{"ui": ..., "result": ...}` when it has both and is an
    output node is not needed here (no built-in output node has outputs)."""
    if isinstance(result, NodeOutput):
        if result.values or result.ui is None:
            return tuple(result.values)
        return {"ui": result.ui}
    if isinstance(result, list):
        return tuple(result)
    return result


def run_node(
    registry: Any, services: Mapping[str, Any], node_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run the registered node `node_type` with ComfyUI-style arguments; ComfyUI's return shape."""
    definition = registry.get(node_type)
    if definition is None:
        raise KeyError(f"no node type {node_type!r} is registered in this runtime")
    bound = bind_arguments(definition, args, kwargs, registry)
    if definition.wants_context:
        bound["context"] = invocation_context(services, node_type)
    return comfy_result(definition.function(**bound))


# ---- INPUT_TYPES in ComfyUI's shape ---------------------------------------------------------------


def input_types(registry: Any, definition: NodeDefinition) -> dict[str, Any]:
    """The declaration as ComfyUI's `INPUT_TYPES()` dict: {"required": {name: (TYPE, {options})},
    "optional": {...}, "hidden": {...}}; combo choices are the current list (files, samplers...)."""
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    for spec in definition.current_inputs():
        (optional if spec.optional else required)[spec.name] = _input_entry(registry, spec)
    declared: dict[str, Any] = {"required": required}
    if optional:
        declared["optional"] = optional
    if definition.hidden:
        declared["hidden"] = dict(definition.hidden)
    return declared


def _input_entry(registry: Any, spec: Input) -> tuple[Any, ...]:
    entry = list(registry.input_schema(spec))
    if entry and isinstance(entry[0], list):
        entry[0] = list(entry[0])
    if len(entry) > 1:
        entry[1] = dict(entry[1])
    return tuple(entry)


# ---- the generated classes -------------------------------------------------------------------------


class ClassFactory:
    """Makes (and remembers, per runtime) the ComfyUI-shaped class of each node type.

    `registry` and `services` are the runtime's (engine.comfy_compat.binding.ComfyBinding)."""

    def __init__(self, registry: Any, services: Mapping[str, Any]) -> None:
        self.registry = registry
        self.services = services
        self.classes: dict[str, type] = {}

    def definition(self, node_type: str) -> NodeDefinition:
        definition = self.registry.get(node_type)
        if definition is None:
            raise KeyError(f"no node type {node_type!r} is registered in this runtime")
        return definition  # type: ignore[no-any-return]

    def node_class(
        self,
        node_type: str,
        *,
        class_name: str | None = None,
        function: str | None = None,
        namespace: Mapping[str, Any] | None = None,
    ) -> type:
        """The class for a registered node type (created once per runtime)."""
        known = self.classes.get(node_type)
        if known is not None:
            return known
        facts = comfy_nodes().get(node_type)
        name = class_name or (facts.class_name if facts is not None else node_type)
        body = {**CLASS_ATTRIBUTES.get(node_type, {}), **dict(namespace or {})}
        cls = self._make(node_type, name, function, body)
        self.classes[node_type] = cls
        return cls

    def _make(self, node_type: str, class_name: str, function: str | None, body: dict[str, Any]) -> type:
        definition = self.definition(node_type)
        factory = self
        method_name = function or function_name(node_type)

        def INPUT_TYPES(cls: type) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
            return input_types(factory.registry, factory.definition(node_type))

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return run_node(factory.registry, factory.services, node_type, args, kwargs)

        method.__name__ = method_name
        method.__qualname__ = f"{class_name}.{method_name}"
        outputs = definition.outputs
        attributes: dict[str, Any] = {
            "__module__": "nodes",
            "__doc__": definition.description or None,
            NODE_TYPE_ATTRIBUTE: node_type,
            "INPUT_TYPES": classmethod(INPUT_TYPES),
            "RETURN_TYPES": tuple(o.type for o in outputs),
            "RETURN_NAMES": tuple(o.display_name for o in outputs),
            "OUTPUT_IS_LIST": tuple(o.is_list for o in outputs),
            "FUNCTION": method_name,
            "CATEGORY": definition.category,
            "OUTPUT_NODE": definition.output_node,
            "DESCRIPTION": definition.description,
            method_name: classmethod(method) if method_name == "execute" else method,
        }
        if any(o.tooltip for o in outputs):
            attributes["OUTPUT_TOOLTIPS"] = tuple(o.tooltip or "" for o in outputs)
        if method_name != "execute":  # V3 callers (`Cls.execute(...)`) reach every node too
            attributes["execute"] = classmethod(_v3_execute(factory, node_type))
        attributes.update(_hooks(factory, definition))
        attributes.update(body)
        return type(class_name, (), attributes)


def _hooks(factory: ClassFactory, definition: NodeDefinition) -> dict[str, Any]:
    """IS_CHANGED / VALIDATE_INPUTS from the node's fingerprint / validate hooks (LoadImage's file hash is
    what a pack's LoadImage subclass inherits)."""
    hooks: dict[str, Any] = {}
    node_type = definition.node_type
    for attribute, hook_name in (("IS_CHANGED", "fingerprint"), ("VALIDATE_INPUTS", "validate")):
        hook = getattr(definition, hook_name)
        if hook is None:
            continue

        def call(cls: type, *args: Any, _hook: Any = hook, _name: str = hook_name, **kwargs: Any) -> Any:
            bound = _accepted(_hook, dict(zip(argument_names(definition), args, strict=False)) | kwargs)
            if "context" in inspect.signature(_hook).parameters:
                bound["context"] = invocation_context(factory.services, node_type)
            outcome = _hook(**bound)
            return (True if outcome is None else outcome) if _name == "validate" else outcome

        hooks[attribute] = classmethod(call)
    return hooks


class V3Result(tuple):  # type: ignore[type-arg]
    """A node's outputs as a V3 caller reads them: indexable like ComfyUI's classic tuple, and with
    `.result` / `.ui` as io.NodeOutput has them."""

    ui: Any = None

    @property
    def result(self) -> tuple[Any, ...]:
        return tuple(self)


def _v3_execute(factory: ClassFactory, node_type: str) -> Callable[..., Any]:
    def execute(cls: type, *args: Any, **kwargs: Any) -> Any:
        result = run_node(factory.registry, factory.services, node_type, args, kwargs)
        if isinstance(result, dict):
            out = V3Result(result.get("result") or ())
            out.ui = result.get("ui")
            return out
        return V3Result(result)

    return execute


def missing_class(class_name: str, function: str, category: str = "diffgraph/unavailable") -> type:
    """A stand-in for a ComfyUI built-in class diffgraph does not implement: importing it works (packs
    import many names they never use), calling it says what is missing."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"ComfyUI's {class_name} node is not available in diffgraph; a node that needs it cannot run"
        )

    def INPUT_TYPES(cls: type) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return {"required": {}}

    method.__name__ = function
    return type(
        class_name,
        (),
        {
            "__module__": "nodes",
            "INPUT_TYPES": classmethod(INPUT_TYPES),
            "RETURN_TYPES": (),
            "FUNCTION": function,
            "CATEGORY": category,
            function: method,
        },
    )


def factory_of(binding: Any) -> ClassFactory:
    """The runtime's one ClassFactory (kept in the binding's state, so `nodes` and `comfy_extras.*` hand
    out the same class for a node type)."""
    factory = binding.state.get("classic_node_classes")
    if factory is None:
        factory = ClassFactory(binding.registry, binding.services)
        binding.state["classic_node_classes"] = factory
    return factory  # type: ignore[no-any-return]


def module_classes(factory: ClassFactory, module: str) -> dict[str, type]:
    """class name -> class for every class ComfyUI's `module` ("nodes", "comfy_extras.nodes_mask"...)
    defines: diffgraph's node where it has one, else a stand-in saying the node is unavailable."""
    classes: dict[str, type] = {}
    for class_name, node_type in classes_of_module(module).items():
        if node_type in factory.registry:
            classes[class_name] = factory.node_class(node_type)
        else:
            classes[class_name] = missing_class(class_name, function_name(node_type))
    return classes


def export_classes(namespace: dict[str, Any]) -> None:
    """Fill an env module's namespace (ComfyUI's module of the same name, e.g. comfy_extras.nodes_mask)
    with the classes ComfyUI defines there, for the runtime bound now; names already defined are kept."""
    from engine.comfy_compat.binding import current

    classes = module_classes(factory_of(current()), str(namespace["__name__"]))
    namespace.update({name: cls for name, cls in classes.items() if name not in namespace})
