"""FLUX.1 text conditioning: CLIP-L for the pooled vector, T5-XXL for the context, as ComfyUI stacks them
(``FluxClipModel`` in ``comfy/text_encoders/flux.py``).

- **Context**: T5's final hidden states (``t5_encoder``), padded to at least 256 tokens and never
  truncated: ``(1, max(256, tokens + 1), 4096)``. diffusers pads/truncates to ``max_sequence_length``
  (256 for schnell, 512 for dev); ComfyUI pads to 256 for both and lets longer prompts grow. We follow
  ComfyUI (``t5_min_length`` changes the padding, as its ``T5TokenizerOptions`` node does).
- **Pooled**: CLIP-L's last layer after the final layer norm at the first EOS, without the text projection
  (768; ComfyUI's ``SDClipModel`` defaults with ``return_projected_pooled=False``, diffusers'
  ``CLIPTextModel.pooler_output``). CLIP-L's hidden states are computed but not used, as in ComfyUI.
- No attention mask, as in ComfyUI and diffusers' Flux pipeline.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .encoder import _CLIP_L_SD1, SDTextEncoder
from .t5_encoder import FLUX_T5_MIN_LENGTH, T5TextEncoder

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from .embeddings import EmbeddingLibrary
    from .t5 import T5EncoderModel
    from .t5_tokenizer import T5Tokenizer

# SD1's CLIP-L rule (last layer, final norm) plus the unprojected pooled vector.
FLUX_CLIP_L = dataclasses.replace(_CLIP_L_SD1, pooled=True, projected_pooled=False)


class FluxTextStack(nn.Module):
    """Flux's two text encoders (both required, like ComfyUI's ``DualCLIPLoader(type=flux)``)."""

    def __init__(
        self,
        clip_l: nn.Module,
        t5xxl: T5EncoderModel,
        *,
        t5_tokenizer: T5Tokenizer,
        clip_tokenizer: CLIPTokenizer | None = None,
        t5_min_length: int = FLUX_T5_MIN_LENGTH,
    ) -> None:
        super().__init__()
        self.clip_l = SDTextEncoder("flux", {"clip_l": clip_l}, [FLUX_CLIP_L], tokenizer=clip_tokenizer)
        self.t5xxl = T5TextEncoder(t5xxl, t5_tokenizer, min_length=t5_min_length)

    @torch.no_grad()
    def encode(
        self,
        prompt: str,
        *,
        clip_skip: int | None = None,
        embeddings: EmbeddingLibrary | None = None,
        warnings: list[str] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(context (1, >=256, d_t5), pooled (1, d_clip_l))``, float32 on the encoders' device.

        ``clip_skip`` (ComfyUI's ``CLIPSetLastLayer``) selects T5's layer for the context; CLIP-L's pooled
        vector always comes from its final layer, so there it changes nothing (as in ComfyUI).
        """
        return self.encode_parts(
            prompt, prompt, clip_skip=clip_skip, embeddings=embeddings, warnings=warnings
        )

    @torch.no_grad()
    def encode_parts(
        self,
        clip_l: str,
        t5xxl: str,
        *,
        clip_skip: int | None = None,
        embeddings: EmbeddingLibrary | None = None,
        warnings: list[str] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``CLIPTextEncodeFlux``: CLIP-L's prompt for the pooled vector, T5's for the context."""
        context, _mask = self.t5xxl.encode(t5xxl, clip_skip=clip_skip, drop_embeddings=embeddings is not None)
        _hidden, pooled = self.clip_l.encode(
            clip_l, clip_skip=clip_skip, embeddings=embeddings, warnings=warnings
        )
        assert pooled is not None
        return context, pooled.to(context.device)
