"""The CLIP socket value for SD3 / SD3.5 and FLUX.1: their text-encoder stacks behind the CLIP handle.

`FlowClipHandle` is a `ClipHandle` whose module is an `SD3TextStack` (CLIP-L, CLIP-G, T5-XXL, each
optional) or a `FluxTextStack` (CLIP-L + T5-XXL), so `CLIPTextEncode`, `CLIPSetLastLayer` and every node
that calls `encode_conditioning` work unchanged; `encode_sd3` / `encode_flux` are the per-encoder prompts
of `CLIPTextEncodeSD3` / `CLIPTextEncodeFlux`. CONDITIONING entries carry the stack's pooled vector as
"pooled_output" (SD3: CLIP-L + CLIP-G, Flux: CLIP-L) and T5's "attention_mask" when the stack uses one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from engine.diffusion.text.flux_stack import FluxTextStack
from engine.diffusion.text.sd3_stack import SD3TextStack
from engine.handles.clip import ClipHandle, Conditioning

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _t5_options(stack: Any, options: Mapping[str, int]) -> Iterator[None]:
    """T5TokenizerOptions of one clone ("t5xxl_min_length", "t5xxl_min_padding") on the shared T5 encoder
    for one encoding, restored afterwards (the encoder module is shared by every clone)."""
    t5 = getattr(stack, "t5xxl", None)
    if t5 is None or not options:
        yield
        return
    saved = t5.min_length, t5.min_padding
    t5.min_length = options.get("t5xxl_min_length", t5.min_length)
    t5.min_padding = options.get("t5xxl_min_padding", t5.min_padding)
    try:
        yield
    finally:
        t5.min_length, t5.min_padding = saved


class FlowClipHandle(ClipHandle):
    """Text encoders of SD3 ("sd3") or FLUX.1 ("flux") on a CLIP socket (see the module docstring).

    `tokenizer_options` (T5TokenizerOptions, a new dict per clone): ComfyUI's per-tokenizer options."""

    tokenizer_options: Mapping[str, int] = {}

    @property
    def encoder(self) -> Any:  # the stack, not an SDTextEncoder
        return self.patcher.module

    @property
    def family(self) -> str:
        return "sd3" if isinstance(self.encoder, SD3TextStack) else "flux"

    def _report(self, found: list[str], warnings: list[str] | None) -> None:
        for message in found:
            log.warning("%s: %s", self.name, message)
        if warnings is not None:
            warnings.extend(m for m in found if m not in warnings)

    def _run(self, method: str, *texts: str | None, warnings: list[str] | None) -> tuple[Any, ...]:
        """(cond, pooled, extra) of the stack's `method`, float32 on the CPU."""
        found: list[str] = []
        with self.use(), _t5_options(self.encoder, self.tokenizer_options):
            out = getattr(self.encoder, method)(
                *texts, clip_skip=self._clip_skip_arg(), embeddings=self.embeddings, warnings=found
            )
        self._report(found, warnings)
        if isinstance(self.encoder, FluxTextStack):
            cond, pooled = out
            extra: dict[str, Any] = {}
        else:
            cond, pooled, extra = out.cond, out.pooled, dict(out.extra)
        extra = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
        return cond.float().cpu(), pooled.float().cpu(), extra

    def encode(
        self, text: str, *, warnings: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cond, pooled, _ = self._run("encode", text, warnings=warnings)
        return cond, pooled

    def _conditioning(self, parts: tuple[Any, ...], extra: dict[str, Any]) -> Conditioning:
        cond, pooled, stack_extra = parts
        return [[cond, {"pooled_output": pooled, **stack_extra, **extra}]]

    def encode_conditioning(
        self, text: str, *, warnings: list[str] | None = None, **extra: Any
    ) -> Conditioning:
        if self.clip_hooks is not None:
            return self.clip_hooks.encode_conditioning(self, text, warnings=warnings, **extra)
        return self._conditioning(self._run("encode", text, warnings=warnings), extra)

    def encode_sd3(
        self, clip_l: str, clip_g: str, t5xxl: str, *, empty_padding: str, warnings: list[str] | None = None
    ) -> Conditioning:
        """CLIPTextEncodeSD3: a prompt per encoder; with `empty_padding` "none" an empty prompt gives its
        encoder no tokens (ComfyUI's rule, see `SD3TextStack.encode_parts`)."""
        if not isinstance(self.encoder, SD3TextStack):
            raise ValueError(f"CLIPTextEncodeSD3 needs SD3 text encoders; this CLIP is {self.family}")
        if empty_padding not in ("none", "empty_prompt"):
            raise ValueError(f"empty_padding must be 'none' or 'empty_prompt', got {empty_padding!r}")
        drop = empty_padding == "none"
        texts = [None if drop and not t else t for t in (clip_l, clip_g, t5xxl)]
        return self._conditioning(self._run("encode_parts", *texts, warnings=warnings), {})

    def encode_flux(
        self, clip_l: str, t5xxl: str, *, guidance: float, warnings: list[str] | None = None
    ) -> Conditioning:
        """CLIPTextEncodeFlux: CLIP-L's prompt (pooled vector), T5's (context) and the guidance scale."""
        if not isinstance(self.encoder, FluxTextStack):
            raise ValueError(f"CLIPTextEncodeFlux needs FLUX.1 text encoders; this CLIP is {self.family}")
        parts = self._run("encode_parts", clip_l, t5xxl, warnings=warnings)
        return self._conditioning(parts, {"guidance": guidance})

    def __repr__(self) -> str:
        return f"FlowClipHandle({self.name!r}, family={self.family}, clip_skip={self.clip_skip})"
