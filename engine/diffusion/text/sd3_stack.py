"""SD3 / SD3.5 text conditioning: CLIP-L, CLIP-G and T5-XXL, each optional, as ComfyUI stacks them
(``SD3ClipModel`` in ``comfy/text_encoders/sd3_clip.py``).

- **CLIP-L** (pad 49407) and **CLIP-G** (pad 0): the penultimate hidden state without the final layer
  norm, 77-token chunks, weighting and embeddings as for SDXL (``SDTextEncoder``). Pooled: CLIP-L's final
  layer-normed state at the first EOS *without* its text projection (768; ComfyUI's
  ``return_projected_pooled=False``, as in Stability's SD3 reference code), CLIP-G's through its projection
  (1280). diffusers' ``StableDiffusion3Pipeline`` projects CLIP-L's pooled vector too; both agree when that
  projection is the identity.
- **Context.** ``[clip_l | clip_g]`` on the feature axis (768 + 1280 = 2048), cut to the shorter token count
  of the two, zero-padded on the feature axis to T5's width (4096), then T5's rows (at least 77 tokens,
  ``t5_encoder``) appended on the token axis: ``(1, 77 * chunks + N_t5, 4096)``.
- **Missing encoders** (``TripleCLIPLoader`` with fewer files, ``CLIPLoader(type=sd3)`` with one): CLIP-L's
  slot of the features and of the pooled vector is zeros (CLIP-G's features move to their place:
  ``pad(g, (768, 0))``), a missing CLIP-G leaves zeros in its 1280 pooled entries, without CLIP the
  context is T5's alone, without T5 it is the CLIP part alone, with nothing at all it is
  ``zeros(1, 77, 4096)`` and the pooled vector ``zeros(1, 2048)``.
- **clip_skip** (ComfyUI's ``CLIPSetLastLayer``) applies to all three, T5 included, as in ComfyUI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .encoder import _CLIP_G_SDXL, _CLIP_L_SDXL, SDTextEncoder
from .t5_encoder import SD3_T5_MIN_LENGTH, T5TextEncoder

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from .embeddings import EmbeddingLibrary
    from .t5 import T5EncoderModel
    from .t5_tokenizer import T5Tokenizer

# SD3's CLIP-L: SDXL's hidden-state rule, but it also provides an (unprojected) pooled vector.
SD3_CLIP_L = dataclasses.replace(_CLIP_L_SDXL, pooled=True, projected_pooled=False)
SD3_CLIP_G = _CLIP_G_SDXL


@dataclass(frozen=True)
class SD3TextDims:
    """Feature sizes of the stack: used for the zeros that stand in for missing encoders."""

    clip_l: int = 768  # CLIP-L width = its pooled size
    clip_g: int = 1280  # CLIP-G width
    clip_g_pooled: int = 1280  # CLIP-G projection size
    context: int = 4096  # T5-XXL width; the CLIP features are padded to it


@dataclass
class SD3Conditioning:
    cond: Tensor  # (1, tokens, dims.context)
    pooled: Tensor  # (1, dims.clip_l + dims.clip_g_pooled)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # "attention_mask" when enabled


class SD3TextStack(nn.Module):
    """SD3's text encoders; any of them may be ``None``. Submodules ``clip_l``, ``clip_g``, ``t5xxl``."""

    def __init__(
        self,
        clip_l: nn.Module | None,
        clip_g: nn.Module | None,
        t5xxl: T5EncoderModel | None,
        *,
        clip_tokenizer: CLIPTokenizer | None = None,
        t5_tokenizer: T5Tokenizer | None = None,
        t5_attention_mask: bool = False,
        t5_min_length: int = SD3_T5_MIN_LENGTH,
        dims: SD3TextDims | None = None,
    ) -> None:
        super().__init__()
        self.dims = dims or SD3TextDims()
        self.t5_attention_mask = t5_attention_mask
        self.clip_l = (
            SDTextEncoder("sd3", {"clip_l": clip_l}, [SD3_CLIP_L], tokenizer=clip_tokenizer)
            if clip_l
            else None
        )
        # Share one CLIP tokenizer between the towers (building one takes a moment).
        if self.clip_l is not None and clip_tokenizer is None:
            clip_tokenizer = self.clip_l.tokenizer
        self.clip_g = (
            SDTextEncoder("sd3", {"clip_g": clip_g}, [SD3_CLIP_G], tokenizer=clip_tokenizer)
            if clip_g
            else None
        )
        self.t5xxl: T5TextEncoder | None = None
        if t5xxl is not None:
            if t5_tokenizer is None:
                raise ValueError(
                    "SD3 with a T5 text encoder needs the T5 tokenizer (t5_tokenizer.find_t5_vocabulary, load_t5_tokenizer)"
                )
            self.t5xxl = T5TextEncoder(
                t5xxl, t5_tokenizer, min_length=t5_min_length, attention_mask=t5_attention_mask
            )
        self._check_dims()

    def _check_dims(self) -> None:
        found = {
            "clip_l": self.clip_l.context_dim if self.clip_l else None,
            "clip_g": self.clip_g.context_dim if self.clip_g else None,
            "clip_g_pooled": self.clip_g.pooled_dim if self.clip_g else None,
            "context": self.t5xxl.width if self.t5xxl else None,
        }
        for name, value in found.items():
            if value is not None and value != getattr(self.dims, name):
                raise ValueError(
                    f"SD3 text encoders: {name} size is {value}, expected {getattr(self.dims, name)} "
                    f"({self.dims}); pass matching dims for non-standard models"
                )
        if self.dims.clip_l + self.dims.clip_g > self.dims.context:
            raise ValueError(f"SD3 text encoders: the CLIP features do not fit in {self.dims.context}")

    @torch.no_grad()
    def encode(
        self,
        prompt: str,
        *,
        clip_skip: int | None = None,
        embeddings: EmbeddingLibrary | None = None,
        warnings: list[str] | None = None,
    ) -> SD3Conditioning:
        """Encode one prompt (see the module docstring); outputs are float32 on the encoders' device."""
        return self.encode_parts(
            prompt, prompt, prompt, clip_skip=clip_skip, embeddings=embeddings, warnings=warnings
        )

    @torch.no_grad()
    def encode_parts(
        self,
        clip_l: str | None,
        clip_g: str | None,
        t5xxl: str | None,
        *,
        clip_skip: int | None = None,
        embeddings: EmbeddingLibrary | None = None,
        warnings: list[str] | None = None,
    ) -> SD3Conditioning:
        """A prompt per encoder (``CLIPTextEncodeSD3``); None = no tokens for that encoder, ComfyUI's
        ``empty_padding="none"`` with an empty text: CLIP-L and CLIP-G both None leave the CLIP part out,
        one of them None is the empty prompt (padded to the other's 77-token chunks, as ComfyUI's node
        pads the token lists), T5 None is the lone ``</s>`` token."""
        dims = self.dims
        kwargs: dict[str, Any] = {"clip_skip": clip_skip, "embeddings": embeddings, "warnings": warnings}
        lg, pooled = None, None
        if clip_l is not None or clip_g is not None:
            lg, pooled = self._clip_part(clip_l or "", clip_g or "", kwargs)
        cond = lg
        extra: dict[str, Any] = {}
        if self.t5xxl is not None:
            t5, mask = self.t5xxl.encode(
                t5xxl or "",
                clip_skip=clip_skip,
                drop_embeddings=embeddings is not None,
                min_length=1 if t5xxl is None else None,
            )
            cond = t5 if lg is None else torch.cat([lg, t5.to(lg.device)], dim=-2)
            if self.t5_attention_mask:
                extra["attention_mask"] = mask
        if cond is None:
            cond = torch.zeros(1, SD3_T5_MIN_LENGTH, dims.context)
        if pooled is None:
            pooled = torch.zeros(1, dims.clip_l + dims.clip_g_pooled, device=cond.device)
        return SD3Conditioning(cond, pooled, extra)

    def _clip_part(self, text_l: str, text_g: str, kwargs: dict[str, Any]) -> tuple[Tensor | None, Tensor]:
        """``[clip_l | clip_g]`` features padded to the context width, and the pooled vector."""
        dims = self.dims
        lg: Tensor | None = None
        l_pooled: Tensor | None = None
        g_pooled: Tensor | None = None
        if self.clip_l is not None:
            lg, l_pooled = self.clip_l.encode(text_l, **kwargs)
        if self.clip_g is not None:
            g, g_pooled = self.clip_g.encode(text_g, **kwargs)
            if lg is not None:
                length = max(lg.shape[1], g.shape[1])
                lg = _pad_chunks(lg, self.clip_l, length, kwargs["clip_skip"])
                g = _pad_chunks(g, self.clip_g, length, kwargs["clip_skip"])
                lg = torch.cat([lg, g], dim=-1)
            else:
                lg = nn.functional.pad(g, (dims.clip_l, 0))
        device = lg.device if lg is not None else None
        if lg is not None:
            lg = nn.functional.pad(lg, (0, dims.context - lg.shape[-1]))
        if l_pooled is None:
            l_pooled = torch.zeros(1, dims.clip_l, device=device)
        if g_pooled is None:
            g_pooled = torch.zeros(1, dims.clip_g_pooled, device=device)
        return lg, torch.cat([l_pooled, g_pooled.to(l_pooled.device)], dim=-1)


def _pad_chunks(cond: Tensor, encoder: SDTextEncoder | None, length: int, clip_skip: int | None) -> Tensor:
    """``cond`` extended with empty-prompt chunks up to ``length`` tokens (ComfyUI pads the shorter of
    CLIP-L's and CLIP-G's token lists with empty 77-token chunks)."""
    if cond.shape[1] >= length or encoder is None:
        return cond
    empty, _ = encoder.encode("", clip_skip=clip_skip)
    while cond.shape[1] < length:
        cond = torch.cat([cond, empty.to(cond.device)], dim=1)
    return cond
