"""comfy.float for custom packs: casting patched weights back to their storage dtype."""


def stochastic_rounding(value, dtype, seed=0):
    """``value`` in ``dtype``. ComfyUI rounds to fp8 stochastically (seeded); diffgraph, which computes
    no fp8 weight patches itself, rounds to nearest for every dtype."""
    return value.to(dtype=dtype)
