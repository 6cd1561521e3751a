"""ComfyUI's comfy.sd1_clip for custom packs: the prompt-weight parsing functions (diffgraph's own parser,
engine.diffusion.text.prompt_weights, which follows ComfyUI's rules) and the tokenizer / text-model class
names. diffgraph's CLIP handles tokenize and encode themselves; building ComfyUI's classes directly is not
supported and says so."""

from __future__ import annotations

from typing import Any

from engine.diffusion.text import prompt_weights as _weights


def parse_parentheses(string: str) -> list[str]:
    """Plain runs and top-level "(...)" groups, in order."""
    return _weights._split_top_level(string)


def token_weights(string: str, current_weight: float) -> list[tuple[str, float]]:
    """(text, weight) segments: "(x)" multiplies by 1.1, "(x:1.5)" sets 1.5, nested groups compound."""
    return _weights._weights(string, current_weight)


def escape_important(text: str) -> str:
    """Hide escaped parentheses ("\\(" / "\\)") from token_weights."""
    return _weights._escape(text)


def unescape_important(text: str) -> str:
    return _weights._unescape(text)


class _Unavailable:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"comfy.sd1_clip.{type(self).__name__} cannot be built in diffgraph; use the CLIP value a loader "
            "gives (clip.tokenize / clip.encode_from_tokens)"
        )


class SDTokenizer(_Unavailable):
    pass


class SD1Tokenizer(_Unavailable):
    pass


class SDClipModel(_Unavailable):
    pass


class SD1ClipModel(_Unavailable):
    pass


class ClipTokenWeightEncoder:
    """ComfyUI's mixin for text models that encode weighted tokens (packs subclass it)."""
