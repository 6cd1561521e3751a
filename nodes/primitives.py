"""Primitive value nodes (ComfyUI's PrimitiveInt/Float/String/Boolean): a typed constant as an output."""

from __future__ import annotations

from engine import api

# ComfyUI's primitives bound their number widgets by ±(2**63 - 1) (symmetric, so the frontend can negate).
I64_MAX = 2**63 - 1


def _primitive(node_type: str, display_name: str, widget: api.Input, output: str) -> api.NodeDefinition:
    """A node whose output is its one widget's value: the five primitives differ only in the widget."""

    def pass_through(value: object) -> tuple[object]:
        return (value,)

    declare = api.node(
        node_type, category="utils/primitive", display_name=display_name, inputs=[widget], outputs=[output]
    )
    return declare(pass_through)


NODES = [
    _primitive(
        "PrimitiveInt",
        "Int",
        api.Int("value", None, min=-I64_MAX, max=I64_MAX, control_after_generate=True, step=None),
        api.INT,
    ),
    _primitive(
        "PrimitiveFloat", "Float", api.Float("value", None, min=-I64_MAX, max=I64_MAX, step=None), api.FLOAT
    ),
    _primitive(
        "PrimitiveString", "String", api.String("value", None, extra={"multiline": False}), api.STRING
    ),
    _primitive(
        "PrimitiveStringMultiline",
        "String (Multiline)",
        api.String("value", None, multiline=True),
        api.STRING,
    ),
    _primitive("PrimitiveBoolean", "Boolean", api.Boolean("value", None), api.BOOLEAN),
]
