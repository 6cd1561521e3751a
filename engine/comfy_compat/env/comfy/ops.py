"""comfy.ops for custom packs (see engine.handles.comfy_surface.ops)."""

from engine.handles.comfy_surface.ops import (
    CastWeightBiasOp,
    cast_bias_weight,
    cast_to,
    cast_to_input,
    disable_weight_init,
    fp8_ops,
    manual_cast,
    pick_operations,
    scaled_dot_product_attention,
    scaled_fp8_ops,
    uncast_bias_weight,
)

__all__ = [
    "CastWeightBiasOp",
    "cast_bias_weight",
    "cast_to",
    "cast_to_input",
    "disable_weight_init",
    "fp8_ops",
    "manual_cast",
    "pick_operations",
    "scaled_dot_product_attention",
    "scaled_fp8_ops",
    "uncast_bias_weight",
]
