"""Primitive value nodes (ComfyUI's PrimitiveInt/Float/String/Boolean): a typed constant as an output."""

from __future__ import annotations

from engine import api


@api.node(
    "PrimitiveInt",
    category="utils/primitive",
    display_name="Int",
    inputs=[api.Int("value", 0, min=-(2**63), max=2**63 - 1, control_after_generate=True)],
    outputs=["INT"],
)
def primitive_int(value: int):
    return (value,)


@api.node(
    "PrimitiveFloat",
    category="utils/primitive",
    display_name="Float",
    inputs=[api.Float("value", 0.0, min=-1e18, max=1e18)],
    outputs=["FLOAT"],
)
def primitive_float(value: float):
    return (value,)


@api.node(
    "PrimitiveString",
    category="utils/primitive",
    display_name="String",
    inputs=[api.String("value")],
    outputs=["STRING"],
)
def primitive_string(value: str):
    return (value,)


@api.node(
    "PrimitiveStringMultiline",
    category="utils/primitive",
    display_name="String (Multiline)",
    inputs=[api.String("value", multiline=True)],
    outputs=["STRING"],
)
def primitive_string_multiline(value: str):
    return (value,)


@api.node(
    "PrimitiveBoolean",
    category="utils/primitive",
    display_name="Boolean",
    inputs=[api.Boolean("value")],
    outputs=["BOOLEAN"],
)
def primitive_boolean(value: bool):
    return (value,)


NODES = [primitive_int, primitive_float, primitive_string, primitive_string_multiline, primitive_boolean]
