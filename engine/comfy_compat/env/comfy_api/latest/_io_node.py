"""io.ComfyNode: the V3 node base class. A pack's node class overrides define_schema() and execute()
(classmethods), and optionally validate_inputs, fingerprint_inputs and check_lazy_status; inside execute,
`cls.hidden.unique_id` / `.prompt` / `.extra_pnginfo` / `.dynprompt` hold the hidden values its schema asked
for. The classic attributes (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...) are derived from the schema as in
ComfyUI, so code written for classic classes can read a V3 class too.
"""

from __future__ import annotations

from typing import Any

from comfy_execution.graph_utils import ExecutionBlocker

from comfy_api.latest._io import HiddenHolder, NodeOutput, classproperty
from engine.comfy_compat import v3 as _adapter


class _ComfyNodeInternal:
    """What every V3 node class derives from (ComfyUI tests for it)."""


class _ComfyNodeBaseInternal(_ComfyNodeInternal):
    _DIFFGRAPH_BASE = True  # v3.overrides() stops here: methods of this class are placeholders
    RELATIVE_PYTHON_MODULE: Any = None
    SCHEMA: Any = None
    resources: Any = None
    hidden: Any = HiddenHolder()  # execute runs on a clone whose `hidden` holds this call's values

    @classmethod
    def define_schema(cls) -> Any:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]

    @classmethod
    def GET_BASE_CLASS(cls) -> Any:
        return _ComfyNodeBaseInternal

    @classmethod
    def VALIDATE_CLASS(cls) -> None:
        for name in ("define_schema", "execute"):
            if not _adapter.overrides(cls, name):
                raise Exception(f"No {name} function was defined for node class {cls.__name__}.")

    @classmethod
    def FINALIZE_SCHEMA(cls) -> Any:
        schema = cls.define_schema()
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Any:
        cls.VALIDATE_CLASS()
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def INPUT_TYPES(cls, include_hidden: bool = True, return_schema: bool = False) -> Any:
        schema = cls.FINALIZE_SCHEMA()
        info = _adapter.v1_inputs(schema)
        if not include_hidden:
            info.pop("hidden", None)
        return (info, schema) if return_schema else info

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict[str, Any]:
        return _adapter.v1_node_info(cls.GET_SCHEMA(), cls)

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict[Any, Any] | None) -> Any:
        """A subclass carrying this call's hidden values, so a call never sees another's (ComfyUI's way)."""
        attributes = {"hidden": HiddenHolder.from_dict(hidden_inputs), "SCHEMA": cls.SCHEMA}
        return type(cls.__name__, (cls,), {**attributes, "__qualname__": cls.__qualname__})

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args: Any, **kwargs: Any) -> NodeOutput:
        result = cls.execute(*args, **kwargs)
        if result is None:
            return NodeOutput()
        if isinstance(result, NodeOutput):
            return result
        if isinstance(result, tuple):
            return NodeOutput(*result)
        if isinstance(result, dict):
            return NodeOutput.from_dict(result)
        if isinstance(result, ExecutionBlocker):
            return NodeOutput(block_execution=result.message)
        raise Exception(f"Invalid return type from node: {type(result)}")

    @classmethod
    def __diffgraph_definition__(cls, node_type: str, display_name: str | None, warnings: list[str]) -> Any:
        """The NodeDefinition diffgraph registers for this class (engine/plugins/classic.py asks for it)."""
        return _adapter.definition_from_v3(cls, node_type, display_name, warnings)

    def __init__(self) -> None:
        type(self).VALIDATE_CLASS()

    @classproperty
    def FUNCTION(cls) -> str:
        return "EXECUTE_NORMALIZED"

    @classproperty
    def DESCRIPTION(cls) -> Any:
        return _schema(cls).description

    @classproperty
    def CATEGORY(cls) -> Any:
        return _schema(cls).category

    @classproperty
    def EXPERIMENTAL(cls) -> Any:
        return _schema(cls).is_experimental

    @classproperty
    def DEPRECATED(cls) -> Any:
        return _schema(cls).is_deprecated

    @classproperty
    def API_NODE(cls) -> Any:
        return _schema(cls).is_api_node

    @classproperty
    def OUTPUT_NODE(cls) -> Any:
        return _schema(cls).is_output_node

    @classproperty
    def INPUT_IS_LIST(cls) -> Any:
        return _schema(cls).is_input_list

    @classproperty
    def NOT_IDEMPOTENT(cls) -> Any:
        return _schema(cls).not_idempotent

    @classproperty
    def RETURN_TYPES(cls) -> list[Any]:
        return [o.io_type for o in _schema(cls).outputs or []]

    @classproperty
    def RETURN_NAMES(cls) -> list[Any]:
        return [o.display_name or o.io_type for o in _schema(cls).outputs or []]

    @classproperty
    def OUTPUT_IS_LIST(cls) -> list[bool]:
        return [bool(o.is_output_list) for o in _schema(cls).outputs or []]

    @classproperty
    def OUTPUT_TOOLTIPS(cls) -> list[Any]:
        return [o.tooltip for o in _schema(cls).outputs or []]


def _schema(cls: Any) -> Any:
    """The class's own schema (a subclass must not read its parent's)."""
    schema = cls.__dict__.get("SCHEMA")
    return schema if schema is not None else cls.GET_SCHEMA()


class ComfyNode(_ComfyNodeBaseInternal):
    """The base class of V3 nodes."""

    _DIFFGRAPH_BASE = True

    @classmethod
    def GET_BASE_CLASS(cls) -> Any:
        return ComfyNode
