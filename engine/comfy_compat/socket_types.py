"""ComfyUI's matching of socket type names, for the str types packs declare (`IO.ANY`, "FLOAT,INT"):
"*" matches anything, and a comma-separated name is the set of its parts, matching another name when
one set contains the other. ComfyUI checks links with `!=`, so packs' type classes override `__ne__`
with this rule."""

from __future__ import annotations


def types_differ(mine: str, other: object) -> bool:
    """`mine != other` under ComfyUI's rule (False means the types connect)."""
    if mine == "*" or other == "*":
        return False
    if not isinstance(other, str):
        return True
    a, b = frozenset(mine.split(",")), frozenset(other.split(","))
    return not (a <= b or b <= a)
