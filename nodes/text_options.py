"""T5TokenizerOptions (ComfyUI's nodes_cond): a CLIP clone whose T5 prompts get at least `min_padding` pad
tokens after the end token and are padded to at least `min_length` tokens.

As in ComfyUI the options replace the encoder's own padding length (77 for SD3, 256 for FLUX.1): the
defaults (0, 0) give unpadded T5 rows. They are set for every T5 kind ComfyUI names; diffgraph's T5-XXL
(SD3 / FLUX.1 text encoders, engine.handles.flow_clip) reads the t5xxl ones, other CLIPs ignore them.
"""

from __future__ import annotations

from typing import Any

from engine import api

_T5_KINDS = ("t5xxl", "pile_t5xl", "t5base", "mt5xl", "umt5xxl")


@api.node(
    "T5TokenizerOptions",
    category="_for_testing/conditioning",
    experimental=True,
    inputs=[
        api.Input("clip", api.CLIP),
        api.Int("min_padding", 0, min=0, max=10000, step=1),
        api.Int("min_length", 0, min=0, max=10000, step=1),
    ],
    outputs=[api.CLIP],
)
def t5_tokenizer_options(clip: Any, min_padding: int, min_length: int):
    """The T5 padding options on a clone (a new dict: the input CLIP keeps its own)."""
    c = clip.clone()
    options = dict(getattr(clip, "tokenizer_options", None) or {})
    for kind in _T5_KINDS:
        options[f"{kind}_min_padding"] = min_padding
        options[f"{kind}_min_length"] = min_length
    c.tokenizer_options = options
    return (c,)


NODES = [t5_tokenizer_options]
