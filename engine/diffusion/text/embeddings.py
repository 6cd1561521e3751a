"""Textual-inversion embeddings referenced in prompts as ``embedding:name``.

Files live in a folder (``models/embeddings``), possibly in subfolders; ``name`` is looked up as given
(it may include a subfolder and/or the extension), then with ``.safetensors``, ``.pt`` and ``.bin``
appended, first directly in the folder, then in its subfolders (sorted, first match wins), as ComfyUI does.

Layouts understood (each tensor is ``(vectors, width)`` or a single ``(width,)`` vector):

- A1111 ``.pt``: ``{"string_to_param": {"*": tensor}, "name": ..., "step": ..., ...}``;
- A1111 ``.safetensors`` export: ``{"emb_params": tensor}``;
- SDXL ``.safetensors``: ``{"clip_l": (n, 768), "clip_g": (n, 1280)}`` (one entry per text encoder);
- diffusers ``learned_embeds.bin``/``.safetensors``: ``{"<token>": tensor}``.

Loading is safe: safetensors, or ``torch.load(weights_only=True)`` which refuses arbitrary pickles.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")
# Which named entry of a multi-encoder file belongs to which text encoder.
_PREFERRED_GENERIC_KEYS = ("string_to_param", "emb_params")


class EmbeddingError(ValueError):
    """An embedding file is missing, unreadable, or does not fit the text encoder."""


@dataclass(frozen=True)
class TextualInversion:
    """The vectors of one embedding file, by entry name (``clip_l``, ``clip_g``, ``string_to_param``, ...)."""

    name: str
    path: Path
    vectors: dict[str, Tensor]

    def vectors_for(self, encoder_key: str, width: int) -> Tensor:
        """The ``(n, width)`` vectors for one text encoder (``encoder_key``: clip_l / clip_h / clip_g).

        An entry named after the encoder wins; otherwise the generic entry (A1111 ``string_to_param`` or
        ``emb_params``, or the only entry) whose width fits.
        """
        if encoder_key in self.vectors:
            chosen = self.vectors[encoder_key]
            if chosen.shape[-1] != width:
                raise self._width_error(encoder_key, width)
            return chosen
        fitting = [k for k, v in self.vectors.items() if v.shape[-1] == width]
        for key in _PREFERRED_GENERIC_KEYS:
            if key in fitting:
                return self.vectors[key]
        if fitting:
            return self.vectors[fitting[0]]
        raise self._width_error(encoder_key, width)

    def _width_error(self, encoder_key: str, width: int) -> EmbeddingError:
        found = ", ".join(f"'{k}': {tuple(v.shape)}" for k, v in self.vectors.items())
        return EmbeddingError(
            f"embedding '{self.name}' ({self.path}) has no vectors of width {width} for text encoder "
            f"'{encoder_key}' (it holds {found}); it was trained for another model family -- use an "
            "embedding made for this checkpoint's family (768: SD1, 1024: SD2, 768+1280: SDXL)"
        )


def _as_matrix(value: Tensor, *, path: Path, key: str) -> Tensor:
    if value.ndim == 1:
        value = value.unsqueeze(0)
    if value.ndim != 2 or not value.is_floating_point():
        raise EmbeddingError(
            f"{path}: entry '{key}' has shape {tuple(value.shape)} and dtype {value.dtype}; "
            "an embedding must be a float tensor of shape (vectors, width)"
        )
    return value.detach()


def parse_embedding_file(data: object, *, path: Path, name: str) -> TextualInversion:
    """Normalise the content of an embedding file into a :class:`TextualInversion`."""
    if not isinstance(data, dict):
        raise EmbeddingError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    vectors: dict[str, Tensor] = {}
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise EmbeddingError(f"{path}: 'string_to_param' should map a token to a tensor")
        # A1111 stores one trained token, conventionally '*'.
        vectors["string_to_param"] = _as_matrix(next(iter(params.values())), path=path, key="string_to_param")
    else:
        for key, value in data.items():
            if isinstance(value, Tensor):
                vectors[str(key)] = _as_matrix(value, path=path, key=str(key))
    if not vectors:
        raise EmbeddingError(
            f"{path}: no embedding tensors found (keys: {sorted(map(str, data))[:10]}); expected an A1111 "
            "'string_to_param', 'emb_params', SDXL 'clip_l'/'clip_g' or diffusers '<token>' layout"
        )
    return TextualInversion(name=name, path=path, vectors=vectors)


class EmbeddingRefusedError(EmbeddingError):
    """An embedding pickle holds Python objects other than tensors, so it was not unpickled."""


def _refusal(exc: Exception, *, name: str, path: Path) -> EmbeddingRefusedError | None:
    """The error for a pickle that ``torch.load(weights_only=True)`` refused, None for other failures."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "weights only" not in text.lower():
        return None
    # torch's own text tells how to load the file unsafely; only the offending global is worth quoting.
    culprit = next((line.strip() for line in text.splitlines() if "Unsupported" in line), "")
    culprit = culprit.removeprefix("WeightsUnpickler error: ").split(" was not an allowed")[0]
    return EmbeddingRefusedError(
        f"embedding '{name}' ({path}) was refused: the file holds pickled Python objects besides "
        f"tensors{f' ({culprit})' if culprit else ''}, and unpickling them could run code, so it was "
        "not loaded; re-save the embedding as .safetensors with a tool you trust"
    )


def read_embedding_file(path: Path, *, name: str | None = None) -> TextualInversion:
    name = name or path.stem
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path), device="cpu")
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the loaders raise many types; all mean "cannot read this file safely"
        refused = _refusal(exc, name=name, path=path)
        if refused is not None:
            raise refused from None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EmbeddingError(
            f"could not load embedding '{name}' from {path}: {reason} Only tensors can be loaded (no pickled "
            "Python objects); re-save the embedding as .safetensors if it comes from an old trainer"
        ) from exc
    return parse_embedding_file(data, path=path, name=name)


class EmbeddingLibrary:
    """Finds and caches textual-inversion embeddings in one folder (scanned lazily, not at creation)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._cache: dict[Path, tuple[float, TextualInversion]] = {}

    def names(self) -> list[str]:
        """Embedding names usable as ``embedding:<name>`` (relative paths without extension), sorted."""
        if not self.folder.is_dir():
            return []
        found = {
            p.relative_to(self.folder).with_suffix("").as_posix()
            for p in self.folder.rglob("*")
            if p.is_file() and p.suffix.lower() in EMBEDDING_EXTENSIONS
        }
        return sorted(found)

    def _candidates(self, directory: Path, name: str) -> list[Path]:
        base = directory / name
        return [base] + [base.with_name(base.name + ext) for ext in EMBEDDING_EXTENSIONS]

    def find(self, name: str) -> Path | None:
        """The file for ``name``, or None. Names that would leave the folder are never resolved."""
        if not name or not self.folder.is_dir():
            return None
        root = self.folder.resolve()
        directories = [root] + sorted(p for p in root.rglob("*") if p.is_dir())
        for directory in directories:
            for candidate in self._candidates(directory, name):
                resolved = candidate.resolve()
                if not resolved.is_relative_to(root):
                    continue
                if resolved.is_file() and resolved.suffix.lower() in EMBEDDING_EXTENSIONS:
                    return resolved
        return None

    def load(self, name: str) -> TextualInversion | None:
        """The embedding called ``name``, or None when no file matches. Unreadable files raise."""
        path = self.find(name)
        if path is None:
            return None
        mtime = path.stat().st_mtime
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        embedding = read_embedding_file(path, name=name)
        self._cache[path] = (mtime, embedding)
        return embedding

    def get(self, name: str) -> TextualInversion:
        """Like :meth:`load` but raises :class:`EmbeddingError` naming the folder when missing."""
        embedding = self.load(name)
        if embedding is None:
            raise EmbeddingError(
                f"embedding '{name}' not found in {self.folder} (looked for {name} with "
                f"{', '.join(EMBEDDING_EXTENSIONS)}); put the file there or fix the name in the prompt"
            )
        return embedding
