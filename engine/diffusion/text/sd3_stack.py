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
        dims = self.dims
        kwargs: dict[str, Any] = {"clip_skip": clip_skip, "embeddings": embeddings, "warnings": warnings}
        lg: Tensor | None = None
        l_pooled: Tensor | None = None
        g_pooled: Tensor | None = None
        if self.clip_l is not None:
            lg, l_pooled = self.clip_l.encode(prompt, **kwargs)
        if self.clip_g is not None:
            g, g_pooled = self.clip_g.encode(prompt, **kwargs)
            if lg is not None:
                length = min(lg.shape[1], g.shape[1])
                lg = torch.cat([lg[:, :length], g[:, :length]], dim=-1)
            else:
                lg = nn.functional.pad(g, (dims.clip_l, 0))
        pooled = None
        if lg is not None:
            lg = nn.functional.pad(lg, (0, dims.context - lg.shape[-1]))
            device = lg.device
            if l_pooled is None:
                l_pooled = torch.zeros(1, dims.clip_l, device=device)
            if g_pooled is None:
                g_pooled = torch.zeros(1, dims.clip_g_pooled, device=device)
            pooled = torch.cat([l_pooled, g_pooled], dim=-1)
        cond = lg
        extra: dict[str, Any] = {}
        if self.t5xxl is not None:
            t5, mask = self.t5xxl.encode(prompt, clip_skip=clip_skip, drop_embeddings=embeddings is not None)
            cond = t5 if lg is None else torch.cat([lg, t5.to(lg.device)], dim=-2)
            if self.t5_attention_mask:
                extra["attention_mask"] = mask
        if cond is None:
            cond = torch.zeros(1, SD3_T5_MIN_LENGTH, dims.context)
        if pooled is None:
            pooled = torch.zeros(1, dims.clip_l + dims.clip_g_pooled, device=cond.device)
        return SD3Conditioning(cond, pooled, extra)
