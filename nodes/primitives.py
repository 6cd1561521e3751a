"""Primitive value nodes (ComfyUI's PrimitiveInt/Float/String/Boolean): a typed constant as an output."""

from __future__ import annotations

from engine import api


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
        api.Int("value", 0, min=-(2**63), max=2**63 - 1, control_after_generate=True),
        api.INT,
    ),
    _primitive("PrimitiveFloat", "Float", api.Float("value", 0.0, min=-1e18, max=1e18), api.FLOAT),
    _primitive("PrimitiveString", "String", api.String("value"), api.STRING),
    _primitive(
        "PrimitiveStringMultiline", "String (Multiline)", api.String("value", multiline=True), api.STRING
    ),
    _primitive("PrimitiveBoolean", "Boolean", api.Boolean("value"), api.BOOLEAN),
]
