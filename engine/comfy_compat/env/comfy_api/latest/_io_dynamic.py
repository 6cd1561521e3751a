"""The V3 inputs whose sockets depend on other inputs: MultiType, MatchType, Autogrow, DynamicCombo.

diffgraph flattens them into plain inputs (`get_dynamic`): an Autogrow's or a DynamicCombo's child inputs are
named "<id>.<child id>", and before execute their values are folded back into the one argument the node
expects (`diffgraph_fold`): the Autogrow's {name: value} dict, the DynamicCombo's {<id>: chosen key, child id:
value, ...}. MatchType and MultiType are one input whose type is the union of the types they allow.
"""

from __future__ import annotations

import copy
from typing import Any

from comfy_api.latest._io import (
    AnyType,
    ComfyTypeI,
    ComfyTypeIO,
    WidgetInput,
    _StringIOType,
    comfytype,
)
from comfy_api.latest._io import Input as BaseInput
from comfy_api.latest._io import Output as BaseOutput


def _type_names(types: Any) -> list[str]:
    items = types if isinstance(types, list | tuple) else [types]
    return [str(t.io_type) for t in items if getattr(t, "io_type", None) is not None]


class DynamicInput(BaseInput):
    def get_dynamic(self) -> list[Any]:
        return [self]


class DynamicOutput(BaseOutput):
    def get_dynamic(self) -> list[Any]:
        return [self]


@comfytype(io_type="COMFY_MULTITYPED_V3")
class MultiType:
    class Input(BaseInput):
        """One input accepting several types; given an Input as `id`, that input's widget is shown too."""

        def __init__(self, id: Any, types: list[Any], display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, extra_dict: Any = None,
                     **more: Any):  # fmt: skip
            self.input_override = None
            if isinstance(id, BaseInput):
                self.input_override = copy.copy(id)
                optional = True if id.optional is True else optional
                tooltip = id.tooltip if id.tooltip is not None else tooltip
                display_name = id.display_name if id.display_name is not None else display_name
                lazy = id.lazy if id.lazy is not None else lazy
                if isinstance(self.input_override, WidgetInput):
                    self.input_override.widget_type = self.input_override.get_io_type()
                id = id.id
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **more)
            self._io_types = types

        def get_io_type(self) -> Any:
            names = _type_names(self._io_types)
            if self.input_override is not None:
                names.insert(0, str(self.input_override.get_io_type()))
            return _StringIOType(",".join(dict.fromkeys(names)))

        def as_dict(self) -> dict[str, Any]:
            mine = super().as_dict()
            return self.input_override.as_dict() | mine if self.input_override is not None else mine


@comfytype(io_type="COMFY_MATCHTYPE_V3")
class MatchType(ComfyTypeIO):
    """Inputs and outputs sharing a template take the same type; here each is the union of the allowed ones."""

    class Template:
        def __init__(self, template_id: str, allowed_types: Any = AnyType):
            self.template_id = template_id
            self.allowed_types = allowed_types if isinstance(allowed_types, list | tuple) else [allowed_types]

        def io_type(self) -> str:
            return ",".join(_type_names(self.allowed_types)) or "*"

        def as_dict(self) -> dict[str, Any]:
            return {"template_id": self.template_id, "allowed_types": self.io_type()}

    class Input(DynamicInput):
        def __init__(self, id: str, template: Any = None, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, extra_dict: Any = None,
                     **more: Any):  # fmt: skip
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **more)
            self.template = template or MatchType.Template(id)

        def get_io_type(self) -> Any:
            return _StringIOType(self.template.io_type())

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | {"template": self.template.as_dict()}

    class Output(DynamicOutput):
        # Newer ComfyUI takes the template first, 0.3.x the id first; both are accepted, also by keyword.
        def __init__(self, first: Any = None, second: Any = None, display_name: str | None = None,
                     tooltip: str | None = None, is_output_list: bool = False, *, id: Any = None,
                     template: Any = None, **more: Any):  # fmt: skip
            if isinstance(first, MatchType.Template):
                first, second = second, first
            id = id if id is not None else first
            template = template if template is not None else second
            super().__init__(id, display_name, tooltip, is_output_list, **more)
            self.template = template or MatchType.Template(str(id))

        @property
        def io_type(self) -> Any:
            return _StringIOType(self.template.io_type())

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | {"template": self.template.as_dict()}


def _child(template: Any, child_id: str, optional: bool, display_name: str | None = None) -> Any:
    child = copy.copy(template)
    child.id = child_id
    child.optional = optional
    if display_name is not None:
        child.display_name = display_name
    return child


@comfytype(io_type="COMFY_AUTOGROW_V3")
class Autogrow(ComfyTypeI):
    """A growing set of copies of one input, passed to execute as {name: value} of those connected/set."""

    class TemplateNames:
        def __init__(self, input: Any, names: list[str], min: int = 1, **more: Any):
            self.input, self.names, self.min = input, list(names), min

        def children(self, parent: str) -> list[Any]:
            return [
                _child(self.input, f"{parent}.{name}", self.input.optional or i >= self.min, name)
                for i, name in enumerate(self.names)
            ]

    class TemplatePrefix:
        def __init__(self, input: Any, prefix: str, min: int = 1, max: int = 10, **more: Any):
            self.input, self.prefix, self.min, self.max = input, prefix, min, max

        def children(self, parent: str) -> list[Any]:
            names = [f"{self.prefix}{i}" for i in range(self.max)]
            return [
                _child(self.input, f"{parent}.{name}", self.input.optional or i >= self.min, name)
                for i, name in enumerate(names)
            ]

    class Input(DynamicInput):
        def __init__(self, id: str, template: Any = None, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, extra_dict: Any = None,
                     **more: Any):  # fmt: skip
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **more)
            self.template = template

        def get_dynamic(self) -> list[Any]:
            return self.template.children(self.id) if self.template is not None else []

        def diffgraph_fold(self, values: dict[str, Any]) -> Any:
            return {name.split(".", 1)[1]: value for name, value in values.items() if value is not None}


AutogrowDynamic = Autogrow


def _widen(kept: Any, other: Any) -> None:
    """A number input declared by several options accepts what any of them accepts."""
    mine, theirs = getattr(kept, "numbers", None), getattr(other, "numbers", None)
    if mine is None or theirs is None:
        return
    for key, pick in (("min", min), ("max", max)):
        if mine.get(key) is not None and theirs.get(key) is not None:
            mine[key] = pick(mine[key], theirs[key])
        else:
            mine[key] = None


@comfytype(io_type="COMFY_DYNAMICCOMBO_V3")
class DynamicCombo(ComfyTypeI):
    """A combo whose chosen option brings its own inputs; execute gets {<id>: key, <child id>: value, ...}."""

    class Option:
        def __init__(self, key: str, inputs: list[Any] | None = None, **more: Any):
            self.key, self.inputs = key, list(inputs or [])

    class Input(DynamicInput):
        def __init__(self, id: str, options: list[Any] | None = None, display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None, lazy: bool | None = None,
                     default: str | None = None, extra_dict: Any = None, **more: Any):  # fmt: skip
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **more)
            self.options = list(options or [])
            self.default = default

        def get_dynamic(self) -> list[Any]:
            from comfy_api.latest._io import Combo

            keys = [option.key for option in self.options]
            combo = Combo.Input(self.id, options=keys, display_name=self.display_name, optional=self.optional,
                                tooltip=self.tooltip, default=self.default if self.default in keys else None)  # fmt: skip
            children: dict[str, Any] = {}
            for option in self.options:  # a child in several options appears once, with the widest range
                for item in option.inputs:
                    if item.id in children:
                        _widen(children[item.id], item)
                    else:
                        children[item.id] = _child(item, f"{self.id}.{item.id}", True)
                        if hasattr(item, "numbers"):
                            children[item.id].numbers = dict(item.numbers)
            return [combo, *children.values()]

        def diffgraph_fold(self, values: dict[str, Any]) -> Any:
            key = values.get(self.id)
            chosen = next((o for o in self.options if o.key == key), None)
            folded: dict[str, Any] = {self.id: key}
            for item in chosen.inputs if chosen is not None else []:
                value = values.get(f"{self.id}.{item.id}")
                folded[item.id] = value if value is not None else getattr(item, "default", None)
            return folded


@comfytype(io_type="COMFY_COMBODYNAMIC_V3")
class ComboDynamic(ComfyTypeI):
    class Input(DynamicInput):
        pass


__all__ = ["Autogrow", "AutogrowDynamic", "ComboDynamic", "DynamicCombo", "DynamicInput", "DynamicOutput"]
__all__ += ["MatchType", "MultiType"]
