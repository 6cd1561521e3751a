"""The CLIP socket value: the family's text encoder(s), clip_skip and the embeddings library."""

from __future__ import annotations

import logging
from typing import Any

import torch

from engine.diffusion.text.embeddings import EmbeddingLibrary
from engine.diffusion.text.encoder import SDTextEncoder
from engine.handles.base import ManagedHandle
from engine.handles.comfy_surface.clip_vae import ComfyClipMixin
from engine.memory.manager import ModelManager
from engine.memory.patcher import ModelPatcher

Conditioning = list[list[Any]]

log = logging.getLogger(__name__)


class ClipHandle(ComfyClipMixin, ManagedHandle):
    """Text encoder(s) on a CLIP socket. `clip_skip` None = the family default layer; -N = N-th from the
    end (ComfyUI's CLIPSetLastLayer value, -1 = last layer). Clones share the weights.

    An `embedding:name` the encoder cannot use (missing, refused as an unsafe pickle, made for another
    family) is skipped, as ComfyUI does, but not silently: it is logged as a warning and added to the
    `warnings` list the caller passes (nodes show those in their UI output).

    ComfyUI's CLIP methods (tokenize, encode_from_tokens, cond_stage_model...) come from ComfyClipMixin."""

    # SetClipHooks' hooks (engine.handles.hooks.ClipHooks) on this clone; encode_conditioning defers to it.
    clip_hooks: Any = None

    def __init__(
        self,
        patcher: ModelPatcher,
        *,
        manager: ModelManager,
        embeddings: EmbeddingLibrary | None = None,
        clip_skip: int | None = None,
        name: str = "clip",
    ) -> None:
        super().__init__(patcher, manager=manager, name=name)
        self.embeddings = embeddings
        self.clip_skip = clip_skip

    @property
    def encoder(self) -> SDTextEncoder:
        module = self.patcher.module
        assert isinstance(module, SDTextEncoder)
        return module

    @property
    def family(self) -> str:
        return self.encoder.family

    def with_last_layer(self, stop_at_clip_layer: int) -> ClipHandle:
        """A clone that uses the output of layer `stop_at_clip_layer` (negative, -1 = last)."""
        if stop_at_clip_layer >= 0:
            raise ValueError(
                f"stop_at_clip_layer must be negative (-1 = last layer, -2 = penultimate), got {stop_at_clip_layer}"
            )
        c = self.clone()
        c.clip_skip = stop_at_clip_layer
        return c

    def _clip_skip_arg(self) -> int | None:
        # ComfyUI applies CLIPSetLastLayer(-1) as "the last layer"; the family default (SD2's penultimate
        # layer) only applies when no CLIPSetLastLayer was used.
        return self.clip_skip

    def encode(
        self, text: str, *, warnings: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond (1, tokens, dim), pooled (1, P) or None), float32 on the CPU. Problems with embedding
        references are logged and appended to `warnings` (see the class docstring)."""
        found: list[str] = []
        with self.use():
            cond, pooled = self.encoder.encode(
                text, clip_skip=self._clip_skip_arg(), embeddings=self.embeddings, warnings=found
            )
        for message in found:
            log.warning("%s: %s", self.name, message)
        if warnings is not None:
            warnings.extend(m for m in found if m not in warnings)
        return cond.cpu(), None if pooled is None else pooled.cpu()

    def encode_conditioning(
        self, text: str, *, warnings: list[str] | None = None, **extra: Any
    ) -> Conditioning:
        """ComfyUI's CONDITIONING for one prompt: [[cond, {"pooled_output": pooled, **extra}]]."""
        if self.clip_hooks is not None:
            return self.clip_hooks.encode_conditioning(self, text, warnings=warnings, **extra)
        cond, pooled = self.encode(text, warnings=warnings)
        options: dict[str, Any] = {"pooled_output": pooled} if pooled is not None else {}
        options.update(extra)
        return [[cond, options]]

    def encode_dual(
        self, text_g: str, text_l: str, *, warnings: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SDXL with different prompts for CLIP-G and CLIP-L: the L part of the context comes from
        `text_l`, the G part and the pooled vector from `text_g`. When the prompts need different numbers
        of 77-token chunks the shorter side is padded with the encoding of an empty prompt (ComfyUI pads
        the shorter token list with empty chunks)."""
        if text_g == text_l or self.family != "sdxl":
            return self.encode(text_g, warnings=warnings)
        width_l = self.encoder._width("clip_l")
        cond_g, pooled = self.encode(text_g, warnings=warnings)
        cond_l, _ = self.encode(text_l, warnings=warnings)
        part_l, part_g = cond_l[..., :width_l], cond_g[..., width_l:]
        if part_l.shape[1] != part_g.shape[1]:
            empty, _ = self.encode("")
            while part_l.shape[1] < part_g.shape[1]:
                part_l = torch.cat([part_l, empty[..., :width_l]], dim=1)
            while part_g.shape[1] < part_l.shape[1]:
                part_g = torch.cat([part_g, empty[..., width_l:]], dim=1)
        return torch.cat([part_l, part_g], dim=-1), pooled

    def __repr__(self) -> str:
        return f"ClipHandle({self.name!r}, family={self.family}, clip_skip={self.clip_skip})"
