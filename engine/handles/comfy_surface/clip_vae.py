"""ComfyUI's CLIP and VAE object surfaces (comfy.sd.CLIP / comfy.sd.VAE) on diffgraph's CLIP and VAE values.

CLIP: ``tokenize(text)`` gives ComfyUI's token structure - one entry per text encoder ("l" for CLIP ViT-L,
"g" for OpenCLIP bigG, "h" for OpenCLIP ViT-H), each a list of 77-token chunks of ``(token, weight)``
pairs (``(token, weight, word_id)`` with ``return_word_ids``) - and ``encode_from_tokens`` encodes such a
structure through the same tower code as CLIPTextEncode, so the two give identical conditioning.
Textual-inversion embeddings referenced in the text travel as slot objects in place of token ids.

VAE: ``encode`` / ``decode`` take and give ComfyUI's shapes (IMAGE (B, H, W, C) in 0..1, latents
(B, C, h, w) - raw VAE latents, ComfyUI's LATENT space: the model's latent_format maps them at sampling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from engine.diffusion.text import encoder as text_encoder
from engine.diffusion.text.prompt_weights import tokenize_prompt
from engine.handles.comfy_surface.patcher import add_comfy_patches

# ComfyUI's keys for the text towers in token dicts and encoder outputs.
TOWER_NAMES = {"clip_l": "l", "clip_g": "g", "clip_h": "h"}


def _clip_own_keys(name: str) -> list[str]:
    """The encoder's names for a ComfyUI CLIP key ``clip_x.transformer.<rest>``: towers hold either the
    text model itself or a model with ``text_model`` / ``text_projection`` inside."""
    tower, sep, rest = name.partition(".transformer.")
    if not sep:
        return [name]
    candidates = [f"towers.{tower}.{rest}"]
    if rest.startswith("text_model."):
        candidates.append(f"towers.{tower}.{rest[len('text_model.') :]}")
    return candidates


class ClipTokenizerView:
    """``clip.tokenizer``: ComfyUI's tokenizer object (``tokenize_with_weights``)."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip

    def tokenize_with_weights(
        self, text: str, return_word_ids: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        return self.clip.tokenize(text, return_word_ids=return_word_ids)

    def untokenize(self, token_weight_pair: list[Any]) -> list[Any]:
        vocab = {v: k for k, v in self.clip.encoder.tokenizer.get_vocab().items()}
        return [(pair, vocab.get(pair[0], "")) for pair in token_weight_pair]


class ComfyClipMixin:
    """ComfyUI CLIP methods for ClipHandle (which supplies ``encoder``, ``embeddings``, ``clip_skip``,
    ``use()``, ``patcher``, ``clone()``)."""

    encoder: Any
    embeddings: Any
    clip_skip: int | None
    patcher: Any
    _embedding_vectors: dict[str, list[torch.Tensor]]

    @property
    def cond_stage_model(self) -> Any:
        return self.encoder

    @property
    def tokenizer(self) -> ClipTokenizerView:
        return ClipTokenizerView(self)

    @property
    def layer_idx(self) -> int | None:
        return self.clip_skip

    def clip_layer(self, layer_idx: int) -> None:
        """ComfyUI's in-place CLIPSetLastLayer (``layer_idx`` negative, -1 = last layer)."""
        self.clip_skip = layer_idx

    def load_model(self) -> Any:
        return self.patcher

    def add_patches(
        self, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
    ) -> list[Any]:
        """ComfyUI's CLIP.add_patches: keys ``clip_l.transformer.text_model.…`` (``clip_g``, ``clip_h``)
        or the encoder's own names; values ComfyUI's patch values. Returns the keys that matched."""
        return add_comfy_patches(self.patcher, patches, _clip_own_keys, strength_patch, strength_model)

    def tokenize(
        self, text: str, return_word_ids: bool = False, **kwargs: Any
    ) -> dict[str, list[list[tuple[Any, ...]]]]:
        enc = self.encoder
        resolver = None
        if self.embeddings is not None:
            resolver = text_encoder._EmbeddingResolver(
                self.embeddings, [(s.key, enc._width(s.key)) for s in enc.specs]
            )
        tokenized = tokenize_prompt(text, enc.tokenizer, resolve_embedding=resolver)
        if resolver is not None:
            # Kept for encode_from_tokens: the slots in the token lists name these vectors.
            self._embedding_vectors = {**getattr(self, "_embedding_vectors", {}), **resolver.vectors}
        out: dict[str, list[list[tuple[Any, ...]]]] = {}
        for spec in enc.specs:
            chunks = tokenized.chunks(pad_token_id=spec.pad_token_id)
            if return_word_ids:
                # ComfyUI numbers the words of the prompt from 1 (0 = start, end and padding); diffgraph's
                # tokenizer does not keep word boundaries, so every prompt token counts as word 1.
                special = {text_encoder.BOS_TOKEN_ID, text_encoder.EOS_TOKEN_ID, spec.pad_token_id}
                rows = [[(t, w, 0 if t in special else 1) for t, w in chunk] for chunk in chunks]
                out[TOWER_NAMES.get(spec.key, spec.key)] = rows
            else:
                out[TOWER_NAMES.get(spec.key, spec.key)] = [[(t, w) for t, w in chunk] for chunk in chunks]
        return out

    def encode_from_tokens(
        self, tokens: dict[str, Any], return_pooled: bool | str = False, return_dict: bool = False
    ) -> Any:
        """Conditioning (1, tokens, dim) for a ``tokenize`` structure; with ``return_pooled`` also the
        pooled vector, with ``return_dict`` ``{"cond": ..., "pooled_output": ...}``. ``return_pooled=
        "unprojected"``: the pooled tower's (the first one's for SD1/SD2) final-norm end-token state, without
        its text projection (ComfyUI's ``projected_pooled: False``; GLIGEN and SD3/Flux CLIP-L use it)."""
        enc = self.encoder
        vectors_by_name = getattr(self, "_embedding_vectors", {})
        conds, pooled = [], None
        unprojected = return_pooled == "unprojected"
        pooled_index = next((i for i, s in enumerate(enc.specs) if s.pooled), 0)
        with self.use():  # type: ignore[attr-defined]
            for index, spec in enumerate(enc.specs):
                name = TOWER_NAMES.get(spec.key, spec.key)
                if name not in tokens:
                    raise KeyError(
                        f"tokens have no '{name}' entry (this CLIP encodes with {list(TOWER_NAMES)})"
                    )
                chunks = [[(entry[0], float(entry[1])) for entry in chunk] for chunk in tokens[name]]
                vectors = {n: per_tower[index] for n, per_tower in vectors_by_name.items()}
                if unprojected and index == pooled_index:
                    spec = dataclasses.replace(spec, pooled=True, projected_pooled=False)
                with torch.no_grad():
                    cond, tower_pooled = enc._encode_tower(
                        spec, chunks, clip_skip=self.clip_skip, vectors=vectors
                    )
                conds.append(cond)
                if spec.pooled:
                    pooled = tower_pooled
        cond_all = torch.cat(conds, dim=-1).cpu()
        pooled = None if pooled is None else pooled.cpu()
        if return_dict:
            return {"cond": cond_all, "pooled_output": pooled}
        return (cond_all, pooled) if return_pooled else cond_all

    def encode_from_tokens_scheduled(
        self,
        tokens: dict[str, Any],
        unprojected_pooled: bool = True,
        add_dict: dict[str, Any] | None = None,
        show_pbar: bool = True,
    ) -> list[list[Any]]:
        out = self.encode_from_tokens(tokens, return_dict=True)
        cond = out.pop("cond")
        options = {k: v for k, v in out.items() if v is not None}
        return [[cond, {**options, **(add_dict or {})}]]


class ComfyVaeMixin:
    """ComfyUI VAE methods for VAEHandle (which supplies ``module``, ``downscale``, ``encode``, ``decode``)."""

    if TYPE_CHECKING:  # provided by VAEHandle (declared for the type checker only)

        @property
        def module(self) -> Any: ...

        @property
        def downscale(self) -> int: ...

    @property
    def first_stage_model(self) -> Any:
        return self.module

    @property
    def downscale_ratio(self) -> int:
        return self.downscale

    @property
    def upscale_ratio(self) -> int:
        return self.downscale

    latent_dim = 2

    @property
    def vae_dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            return p.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self._device()  # type: ignore[attr-defined,no-any-return]

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")

    def spacial_compression_decode(self) -> int:
        return self.downscale

    def spacial_compression_encode(self) -> int:
        return self.downscale

    def temporal_compression_decode(self) -> None:
        return None

    def decode_tiled(
        self, samples: torch.Tensor, tile_x: int = 64, tile_y: int = 64, overlap: int = 16, **kwargs: Any
    ) -> torch.Tensor:
        """Tiles in latent pixels, as ComfyUI's (diffgraph's tiles are square: the larger side is used)."""
        f = self.downscale
        return self.decode(samples, tile_size=max(tile_x, tile_y) * f, overlap=overlap * f)  # type: ignore[attr-defined,no-any-return]

    def encode_tiled(
        self,
        pixel_samples: torch.Tensor,
        tile_x: int = 512,
        tile_y: int = 512,
        overlap: int = 64,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Tiles in image pixels, as ComfyUI's."""
        return self.encode(pixel_samples, tile_size=max(tile_x, tile_y), overlap=overlap)  # type: ignore[attr-defined,no-any-return]

    def get_sd(self) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())

    def process_input(self, image: torch.Tensor) -> torch.Tensor:
        return image * 2.0 - 1.0

    def process_output(self, image: torch.Tensor) -> torch.Tensor:
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def memory_used_encode(self, shape: Any, dtype: torch.dtype) -> float:
        # Activations of the encoder grow with the pixel count (an estimate of the order ComfyUI uses).
        return 1767 * shape[-1] * shape[-2] * torch.tensor([], dtype=dtype).element_size()

    def memory_used_decode(self, shape: Any, dtype: torch.dtype) -> float:
        f = self.downscale
        return 2178 * shape[-1] * shape[-2] * f * f * torch.tensor([], dtype=dtype).element_size()
