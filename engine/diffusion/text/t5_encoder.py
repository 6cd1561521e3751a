"""Prompt -> T5-XXL hidden states, with ComfyUI's token layout and weighting (``T5XXLModel`` /
``T5XXLTokenizer`` in ``comfy/text_encoders/sd3_clip.py`` and ``flux.py``, over ``sd1_clip.py``).

- **Tokens.** The prompt is parsed for ``(text:1.2)`` weights like a CLIP prompt
  (``prompt_weights``); each piece is tokenized on its own, the pieces are concatenated, ``</s>`` (1) is
  appended and the row is padded with ``<pad>`` (0) up to ``min_length`` -- 77 for SD3, 256 for Flux.
  There is no start token and no chunking: a long prompt is one row longer than ``min_length`` (ComfyUI's
  ``max_length`` is effectively unbounded). diffusers instead pads/truncates to ``max_sequence_length``
  (256 by default for SD3 and FLUX.1-schnell, 512 for FLUX.1-dev): identical for prompts that fit when
  ``min_length`` equals it, different (truncated there) for longer ones.
- **Weights.** As for CLIP (``ClipTokenWeightEncoder``): when any token has a weight other than 1.0, the
  empty row ``</s> <pad>...`` of the same length is encoded too and weighted vectors move along the line
  from it: ``z' = z_empty + (z - z_empty) * w``.
- **Attention mask.** Off by default, as in ComfyUI for SD3 and Flux (padding takes part in attention,
  which the models were trained with). With ``attention_mask=True`` padding keys are masked out and the
  mask (1 up to and including the first ``</s>``) is returned for the diffusion model.
- **Layer.** ComfyUI's ``CLIPSetLastLayer`` reaches T5 too: ``clip_skip=N`` takes the output of block
  ``-N`` and applies the final layer norm to it (``N`` beyond the depth, or ``None``, is the last layer).
- **Embeddings.** ``embedding:name`` references are dropped from T5 prompts when an embeddings library is
  in use (ComfyUI finds no 4096-wide vector for them and ignores them) and kept as text otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .prompt_weights import WeightedToken, tokenize_prompt
from .t5_tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID

if TYPE_CHECKING:
    from .t5 import T5EncoderModel
    from .t5_tokenizer import T5Tokenizer

SD3_T5_MIN_LENGTH = 77
FLUX_T5_MIN_LENGTH = 256


def t5_token_row(tokens: list[WeightedToken], min_length: int, min_padding: int = 0) -> list[WeightedToken]:
    """``tokens </s> <pad>*`` with at least ``min_padding`` pads, at least ``min_length`` long (ComfyUI's
    single, unbounded T5 row; T5TokenizerOptions sets both)."""
    row = [*tokens, (EOS_TOKEN_ID, 1.0)] + [(PAD_TOKEN_ID, 1.0)] * min_padding
    return row + [(PAD_TOKEN_ID, 1.0)] * max(0, min_length - len(row))


def t5_attention_mask(ids: list[int]) -> list[int]:
    """1 for every position up to and including the first ``</s>``, 0 after it."""
    end = ids.index(EOS_TOKEN_ID) if EOS_TOKEN_ID in ids else len(ids) - 1
    return [1] * (end + 1) + [0] * (len(ids) - end - 1)


class T5TextEncoder(nn.Module):
    """A T5 encoder model with its tokenizer and ComfyUI's prompt handling (see the module docstring).

    The model is a submodule (``t5xxl``) so that whoever manages devices can move or cast it; the
    encoder itself never picks a device.
    """

    def __init__(
        self,
        model: T5EncoderModel,
        tokenizer: T5Tokenizer,
        *,
        min_length: int,
        attention_mask: bool = False,
    ) -> None:
        super().__init__()
        self.t5xxl = model
        self.tokenizer = tokenizer
        self.min_length = min_length
        self.min_padding = 0
        self.attention_mask = attention_mask

    @property
    def width(self) -> int:
        return int(self.t5xxl.config.d_model)

    def tokenize(
        self, prompt: str, *, drop_embeddings: bool = False, min_length: int | None = None
    ) -> list[WeightedToken]:
        """The weighted token row of ``prompt`` (ids are ints: T5 takes no embedding vectors), padded to
        ``min_length`` (the encoder's own when None)."""
        resolver = (lambda _name: None) if drop_embeddings else None
        tokenized = tokenize_prompt(prompt, self.tokenizer, resolve_embedding=resolver, has_start_token=False)
        tokens = [token for group in tokenized.groups for token in group]
        return t5_token_row(tokens, self.min_length if min_length is None else min_length, self.min_padding)

    @torch.no_grad()
    def encode(
        self,
        prompt: str,
        *,
        clip_skip: int | None = None,
        drop_embeddings: bool = False,
        min_length: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(hidden states (1, N, d_model) float32, attention mask (1, N) long)``, N >= ``min_length``
        (the encoder's own when None).

        The mask is returned whether or not it was applied, so callers can pass it on when asked to.
        """
        row = self.tokenize(prompt, drop_embeddings=drop_embeddings, min_length=min_length)
        # T5 rows hold ids only: tokenize() never accepts an embedding reference.
        ids = [t for t, _ in row if isinstance(t, int)]
        assert len(ids) == len(row)
        weights = torch.tensor([w for _, w in row], dtype=torch.float32)
        weighted = bool((weights != 1.0).any())
        rows = [ids]
        if weighted:
            rows.append([EOS_TOKEN_ID] + [PAD_TOKEN_ID] * (len(ids) - 1))
        device = self.t5xxl.shared.weight.device
        masks = torch.tensor([t5_attention_mask(r) for r in rows], dtype=torch.long, device=device)
        z = self._forward(
            torch.tensor(rows, dtype=torch.long, device=device),
            masks if self.attention_mask else None,
            clip_skip,
        ).float()
        if weighted:
            z_empty, z = z[1:2], z[0:1]
            w = weights.to(z.device)[None, :, None]
            z = torch.where(w != 1.0, z_empty + (z - z_empty) * w, z)
        return z, masks[0:1]

    def _forward(self, ids: Tensor, mask: Tensor | None, clip_skip: int | None) -> Tensor:
        blocks = self.t5xxl.encoder.block
        if clip_skip is None or abs(clip_skip) == 1 or abs(clip_skip) > len(blocks):
            return self.t5xxl(ids, attention_mask=mask)
        # Read the block's output with a hook rather than re-implementing the model's forward pass.
        captured: list[Tensor] = []
        handle = blocks[len(blocks) - abs(clip_skip)].register_forward_hook(
            lambda _module, _args, output: captured.append(output)
        )
        try:
            self.t5xxl(ids, attention_mask=mask)
        finally:
            handle.remove()
        return self.t5xxl.encoder.final_layer_norm(captured[0])
