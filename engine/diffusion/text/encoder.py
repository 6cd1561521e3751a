"""Prompt -> conditioning for the Stable Diffusion families (SD1, SD2, SDXL, SDXL refiner).

Which hidden state each family conditions on (checked against the reference implementations:
Stability-AI/stablediffusion ``ldm/modules/encoders/modules.py`` for SD1/SD2, Stability-AI/generative-models
``sgm/modules/encoders/modules.py`` for SDXL, ComfyUI ``comfy/sd1_clip.py``, ``sd2_clip.py``, ``sdxl_clip.py``):

- **SD1** (CompVis ``FrozenCLIPEmbedder``): the last layer of CLIP ViT-L after the final layer norm
  (``last_hidden_state``); pad token 49407. ComfyUI: ``SDClipModel`` defaults, ``layer_norm_hidden_state=True``.
- **SD2** (``FrozenOpenCLIPEmbedder``, ``layer="penultimate"``): the output of the second-to-last resblock
  of OpenCLIP ViT-H, *then* ``ln_final``; pad token 0 (``open_clip.tokenize`` pads with zeros). ComfyUI:
  ``SD2ClipHModel`` (``layer_idx=-2``, pad 0, final norm on the hidden state).
- **SDXL** (SGM ``FrozenCLIPEmbedder`` with ``layer="hidden", layer_idx=11`` and ``FrozenOpenCLIPEmbedder2``
  with ``layer="penultimate"``): the penultimate hidden state of CLIP ViT-L (pad 49407) and the penultimate
  hidden state of OpenCLIP ViT-bigG (pad 0), both *without* a final layer norm, concatenated on the feature
  axis (768 + 1280 = 2048). The pooled vector is bigG's final-layer output after ``ln_final`` at the
  end-of-text token, times ``text_projection`` (1280). ComfyUI: ``SDXLClipModel`` (clip_l ``layer_idx=-2``,
  ``layer_norm_hidden_state=False``; ``SDXLClipG`` the same with pad 0).
- **SDXL refiner**: the bigG branch alone (1280 features, pooled 1280), ComfyUI's ``SDXLRefinerClipModel``.

"Clip skip" follows ComfyUI's ``CLIPSetLastLayer`` (``stop_at_clip_layer = -N``): ``clip_skip=N`` takes the
output of layer ``-N`` (1 = last layer, 2 = penultimate, ...) in every tower of the family, with the
family's rule for the final layer norm (SD1/SD2 apply it, SDXL does not). As in ComfyUI, an explicit
``clip_skip=1`` on SD2 selects the *last* layer although SD2's default is the penultimate one, and a skip
deeper than the tower falls back to the final output with the final layer norm. ``None`` keeps the
family default. The pooled output always comes from the final layer.

Weighting follows ComfyUI's ``ClipTokenWeightEncoder``: when any token has a weight other than 1.0, the
empty prompt (``BOS EOS pad...``) is encoded alongside and each weighted token's vector is moved along
the line from the empty prompt's vector at the same position: ``z' = z_empty + (z - z_empty) * w``.
Tokens with weight 1.0 keep their vector exactly. Long prompts are encoded chunk by chunk (77 tokens each)
and concatenated on the token axis; the pooled output comes from the first chunk.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .embeddings import EmbeddingError, EmbeddingLibrary
from .prompt_weights import EmbeddingSlot, WeightedToken, tokenize_prompt
from .tokenizer import BOS_TOKEN_ID, EOS_TOKEN_ID, load_clip_tokenizer

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

# Stand-in token id for positions whose input vector comes from an embedding; overwritten before the
# transformer runs. It must not be EOS (the pooled output is read at the first EOS).
_EMBEDDING_PLACEHOLDER_ID = 0


@dataclass(frozen=True)
class TowerSpec:
    """How a family uses one CLIP text tower."""

    key: str  # clip_l / clip_h / clip_g: the module name and the embedding-file entry for this tower
    pad_token_id: int
    default_layer: int  # ComfyUI layer index: -1 last, -2 penultimate
    final_norm_on_hidden: bool  # apply the final layer norm to the selected hidden state
    pooled: bool  # this tower provides the family's pooled output
    # Layers cut off the top of the tower when it was saved (diffusers' SD2 text encoder keeps 23 of the
    # 24 ViT-H layers, since SD2 only uses the penultimate one). Layer indices stay relative to the full
    # tower, so defaults and clip skip mean the same as for a complete one.
    removed_top_layers: int = 0
    # The pooled output goes through the text projection (SDXL's bigG). SD3 and Flux pool CLIP-L without
    # it (ComfyUI's ``return_projected_pooled=False``): the final-norm state at the first EOS.
    projected_pooled: bool = True


_CLIP_L_SD1 = TowerSpec("clip_l", EOS_TOKEN_ID, -1, True, False)
_CLIP_H_SD2 = TowerSpec("clip_h", 0, -2, True, False)
_CLIP_L_SDXL = TowerSpec("clip_l", EOS_TOKEN_ID, -2, False, False)
_CLIP_G_SDXL = TowerSpec("clip_g", 0, -2, False, True)


def _core(tower: nn.Module) -> Any:
    """The module holding ``embeddings``, ``encoder.layers`` and ``final_layer_norm``.

    ``CLIPTextModelWithProjection`` (and ``CLIPTextModel`` before transformers 5) wrap it as ``text_model``.
    """
    return getattr(tower, "text_model", tower)


def _run_layer(layer: nn.Module, hidden: Tensor, mask: Tensor) -> Tensor:
    if "causal_attention_mask" in inspect.signature(type(layer).forward).parameters:
        # transformers < 5: forward(hidden_states, attention_mask, causal_attention_mask) -> tuple
        out = layer(hidden, None, mask)
    else:
        out = layer(hidden, mask)
    return out[0] if isinstance(out, tuple) else out


class _EmbeddingResolver:
    """Looks up ``embedding:name`` references for all towers of an encoder and remembers why one failed."""

    def __init__(self, library: EmbeddingLibrary, towers: Sequence[tuple[str, int]]) -> None:
        self.library = library
        self.towers = towers  # (embedding key, width) per tower
        self.vectors: dict[str, list[Tensor]] = {}
        self.problems: dict[str, str] = {}

    def __call__(self, name: str) -> int | None:
        if name in self.vectors:
            return int(self.vectors[name][0].shape[0])
        try:
            embedding = self.library.load(name)
            if embedding is None:
                self.problems[name] = (
                    f"embedding '{name}' not found in {self.library.folder}; "
                    "put the file there or fix the name in the prompt"
                )
                return None
            per_tower = [embedding.vectors_for(key, width) for key, width in self.towers]
        except EmbeddingError as exc:
            self.problems[name] = str(exc)
            return None
        counts = {int(v.shape[0]) for v in per_tower}
        if len(counts) != 1:
            self.problems[name] = (
                f"embedding '{name}' ({embedding.path}) has a different number of vectors per text "
                f"encoder ({[tuple(v.shape) for v in per_tower]}); it cannot be used"
            )
            return None
        self.vectors[name] = per_tower
        return counts.pop()


class SDTextEncoder(nn.Module):
    """The text encoder(s) of one Stable Diffusion family with the tokenizer and prompt features.

    Build it with :meth:`for_sd1`, :meth:`for_sd2`, :meth:`for_sdxl` or :meth:`for_sdxl_refiner`. The towers
    are submodules named ``clip_l`` / ``clip_h`` / ``clip_g``, so the module can be moved or cast as a whole
    by whoever manages devices; the encoder itself never picks a device.
    """

    def __init__(
        self,
        family: str,
        towers: Mapping[str, nn.Module],
        specs: Sequence[TowerSpec],
        *,
        tokenizer: CLIPTokenizer | None = None,
    ) -> None:
        super().__init__()
        if {s.key for s in specs} != set(towers):
            raise ValueError(f"towers {sorted(towers)} do not match the specs {[s.key for s in specs]}")
        self.family = family
        self.specs = tuple(specs)
        self.towers = nn.ModuleDict(dict(towers))
        self.tokenizer = tokenizer if tokenizer is not None else load_clip_tokenizer()
        for spec in self.specs:
            if (
                spec.pooled
                and spec.projected_pooled
                and not hasattr(self.towers[spec.key], "text_projection")
            ):
                raise ValueError(
                    f"{family}: the '{spec.key}' tower provides the pooled output and needs a text "
                    "projection (build it with build_openclip_text_model)"
                )

    @classmethod
    def for_sd1(cls, clip_l: nn.Module, *, tokenizer: CLIPTokenizer | None = None) -> SDTextEncoder:
        return cls("sd1", {"clip_l": clip_l}, [_CLIP_L_SD1], tokenizer=tokenizer)

    @classmethod
    def for_sd2(
        cls, clip_h: nn.Module, *, tokenizer: CLIPTokenizer | None = None, last_layer_removed: bool = False
    ) -> SDTextEncoder:
        """``last_layer_removed``: the tower lacks ViT-H's last layer (diffusers' SD2 ``text_encoder``)."""
        spec = dataclasses.replace(_CLIP_H_SD2, removed_top_layers=1 if last_layer_removed else 0)
        return cls("sd2", {"clip_h": clip_h}, [spec], tokenizer=tokenizer)

    @classmethod
    def for_sdxl(
        cls, clip_l: nn.Module, clip_g: nn.Module, *, tokenizer: CLIPTokenizer | None = None
    ) -> SDTextEncoder:
        # Order matters: SDXL's context is [clip_l features, clip_g features].
        return cls(
            "sdxl", {"clip_l": clip_l, "clip_g": clip_g}, [_CLIP_L_SDXL, _CLIP_G_SDXL], tokenizer=tokenizer
        )

    @classmethod
    def for_sdxl_refiner(cls, clip_g: nn.Module, *, tokenizer: CLIPTokenizer | None = None) -> SDTextEncoder:
        return cls("sdxl_refiner", {"clip_g": clip_g}, [_CLIP_G_SDXL], tokenizer=tokenizer)

    def _width(self, key: str) -> int:
        return int(_core(self.towers[key]).embeddings.token_embedding.weight.shape[1])

    @property
    def context_dim(self) -> int:
        """Feature size of the conditioning tensor (768 SD1, 1024 SD2, 2048 SDXL, 1280 refiner)."""
        return sum(self._width(s.key) for s in self.specs)

    @property
    def pooled_dim(self) -> int | None:
        for spec in self.specs:
            if spec.pooled and not spec.projected_pooled:
                return self._width(spec.key)
            if spec.pooled:
                projection: nn.Linear = getattr(self.towers[spec.key], "text_projection")  # noqa: B009
                return int(projection.weight.shape[0])
        return None

    def num_layers(self, key: str) -> int:
        return len(_core(self.towers[key]).encoder.layers)

    def _layer_choice(self, spec: TowerSpec, clip_skip: int | None) -> tuple[int, bool]:
        """(0-based index of the layer whose output is used, whether to apply the final layer norm)."""
        depth = self.num_layers(spec.key)
        full_depth = depth + spec.removed_top_layers
        if clip_skip is None:
            layer = spec.default_layer
        else:
            if clip_skip == 0:
                raise ValueError("clip_skip must be a non-zero layer count (1 = last layer, 2 = penultimate)")
            layer = -abs(clip_skip)
        index = full_depth + layer
        if index < 0 and not spec.removed_top_layers:
            # ComfyUI: a skip beyond the tower's depth means the normal final output.
            return depth - 1, True
        if not 0 <= index < depth:
            raise ValueError(
                f"{self.family}: the '{spec.key}' text encoder was saved without its last "
                f"{spec.removed_top_layers} layer(s) and has {depth}; clip_skip={clip_skip} needs layer "
                f"{layer} of {full_depth}. Use clip_skip >= {spec.removed_top_layers + 1}, or a single-file "
                "checkpoint that has the full text encoder"
            )
        return index, spec.final_norm_on_hidden

    @torch.no_grad()
    def encode(
        self,
        prompt: str,
        *,
        clip_skip: int | None = None,
        embeddings: EmbeddingLibrary | None = None,
        warnings: list[str] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Encode a prompt into ``(cond (1, 77*chunks, context_dim), pooled (1, pooled_dim) or None)``.

        Outputs are float32 on the towers' device. ``clip_skip``: see the module docstring (``N`` or
        ComfyUI's ``-N``). ``embeddings``: where ``embedding:name`` references are looked up (without it
        they are plain text). A reference that cannot be used raises :class:`EmbeddingError`, unless a
        ``warnings`` list is given: then the message is appended there and the reference is skipped
        (ComfyUI's behaviour).
        """
        resolver = None
        if embeddings is not None:
            resolver = _EmbeddingResolver(embeddings, [(s.key, self._width(s.key)) for s in self.specs])
        tokenized = tokenize_prompt(prompt, self.tokenizer, resolve_embedding=resolver)
        if tokenized.missing_embeddings:
            assert resolver is not None
            messages = [
                resolver.problems.get(name, f"embedding reference 'embedding:{name}' could not be used")
                for name in dict.fromkeys(tokenized.missing_embeddings)
            ]
            if warnings is None:
                raise EmbeddingError("; ".join(messages))
            warnings.extend(messages)

        conds: list[Tensor] = []
        pooled: Tensor | None = None
        for index, spec in enumerate(self.specs):
            chunks = tokenized.chunks(pad_token_id=spec.pad_token_id)
            vectors = {
                name: per_tower[index] for name, per_tower in (resolver.vectors if resolver else {}).items()
            }
            cond, tower_pooled = self._encode_tower(spec, chunks, clip_skip=clip_skip, vectors=vectors)
            conds.append(cond)
            if spec.pooled:
                pooled = tower_pooled
        return torch.cat(conds, dim=-1), pooled

    def _encode_tower(
        self,
        spec: TowerSpec,
        chunks: list[list[WeightedToken]],
        *,
        clip_skip: int | None,
        vectors: Mapping[str, Tensor],
    ) -> tuple[Tensor, Tensor | None]:
        length = len(chunks[0])
        weights = torch.tensor([[w for _, w in chunk] for chunk in chunks], dtype=torch.float32)
        weighted = bool((weights != 1.0).any())
        rows: list[list[Any]] = [[t for t, _ in chunk] for chunk in chunks]
        if weighted:
            empty = [BOS_TOKEN_ID, EOS_TOKEN_ID] + [spec.pad_token_id] * (length - 2)
            rows.append(empty)
        layer, final_norm = self._layer_choice(spec, clip_skip)
        hidden, final = self._forward(spec.key, rows, vectors, layer=layer, need_final=spec.pooled)
        if final_norm:
            hidden = _core(self.towers[spec.key]).final_layer_norm(hidden)
        z = hidden.float()
        if weighted:
            z_empty, z = z[-1:], z[:-1]
            w = weights.to(z.device).unsqueeze(-1)
            z = torch.where(w != 1.0, z_empty + (z - z_empty) * w, z)
        cond = z.reshape(1, -1, z.shape[-1])

        pooled = None
        if final is not None:
            # The first chunk's end-of-text token (ComfyUI and SGM take the first EOS position).
            eos = next(i for i, t in enumerate(rows[0]) if t == EOS_TOKEN_ID)
            pooled = final[0:1, eos]
            if spec.projected_pooled:
                projection: nn.Linear = getattr(self.towers[spec.key], "text_projection")  # noqa: B009
                pooled = projection(pooled)
            pooled = pooled.float()
        return cond, pooled

    def _forward(
        self,
        key: str,
        rows: list[list[Any]],
        vectors: Mapping[str, Tensor],
        *,
        layer: int,
        need_final: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Run the tower on token rows; returns (output of ``layer``, final-norm output of the last layer)."""
        core = _core(self.towers[key])
        table = core.embeddings.token_embedding.weight
        ids = torch.tensor(
            [
                [_EMBEDDING_PLACEHOLDER_ID if isinstance(t, EmbeddingSlot) else int(t) for t in row]
                for row in rows
            ],
            dtype=torch.long,
            device=table.device,
        )
        inputs = core.embeddings.token_embedding(ids)
        for r, row in enumerate(rows):
            for p, token in enumerate(row):
                if isinstance(token, EmbeddingSlot):
                    # Textual inversion replaces the token-embedding lookup; positions are added below.
                    inputs[r, p] = vectors[token.name][token.index].to(
                        device=inputs.device, dtype=inputs.dtype
                    )
        hidden = core.embeddings(inputs_embeds=inputs)
        length = ids.shape[1]
        # CLIP's text transformer is causal (each token sees itself and those before it); no padding mask,
        # as in the original SD encoders.
        mask = torch.full(
            (length, length), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device
        )
        mask = mask.triu(1)[None, None]
        layers = core.encoder.layers
        last = len(layers) - 1 if need_final else layer
        selected: Tensor | None = None
        for i in range(last + 1):
            hidden = _run_layer(layers[i], hidden, mask)
            if i == layer:
                selected = hidden
        assert selected is not None
        final = core.final_layer_norm(hidden) if need_final else None
        return selected, final
