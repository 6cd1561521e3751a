"""The T5 v1.1 SentencePiece tokenizer (SD3's and Flux's T5-XXL), found on the user's machine.

**The pipeline.** ComfyUI tokenizes T5 prompts with ``transformers.T5TokenizerFast`` over the
``tokenizer.json`` it ships in ``comfy/text_encoders/t5_tokenizer/`` (the Hugging Face file of
google/t5-v1_1-xxl). That file is a ``tokenizers`` pipeline: the SentencePiece NFKC character map,
strip on the right, runs of 2+ spaces replaced by one "▁", Metaspace pre-tokenization (spaces become "▁",
one "▁" prepended to the first piece only), a Unigram model over the 32000 SentencePiece pieces, then
``</s>`` (id 1) appended; ``<pad>`` is 0 and ``<extra_id_0..99>`` are the added tokens 32099..32000.
We run that same pipeline with the ``tokenizers`` library (a dependency of ``transformers``): loaded from
a ``tokenizer.json`` as it is, or built from a SentencePiece ``spiece.model`` (the vocabulary of the
original T5 release, of diffusers' ``tokenizer_3/`` for SD3 and ``tokenizer_2/`` for Flux). Reading
``spiece.model`` needs neither ``sentencepiece`` nor ``protobuf``: the few fields used (pieces, scores,
unknown id, character map) are read straight from the protobuf wire format.

**Where the vocabulary comes from** (no download; checked in this order by :func:`find_t5_vocabulary`):

1. an explicit file or folder (``path=``);
2. a diffusers model folder: ``tokenizer_3/`` (SD3) then ``tokenizer_2/`` (Flux);
3. next to the T5 text-encoder file: ``t5_tokenizer/`` beside it, or ``spiece.model`` beside it;
4. the text-encoder model folders (``models/text_encoders``, ``models/clip``): ``t5_tokenizer/``;
5. a ComfyUI installation (``comfyui_roots=``, e.g. the ``base_path`` of ``extra_model_paths.yaml``):
   ``comfy/text_encoders/t5_tokenizer/tokenizer.json``;
6. ComfyUI's ``comfy`` package when it is importable (located without importing it).

In each folder ``tokenizer.json`` is preferred over ``spiece.model`` (it is what ComfyUI runs). No
package on PyPI that we know of ships the T5 vocabulary (``transformers``, ``sentencepiece``,
``tokenizers`` do not); when nothing is found, :class:`T5TokenizerFilesError` says what to put where.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tokenizers is imported only when a tokenizer is built
    from tokenizers import Tokenizer

SPIECE_FILE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_FOLDER = "t5_tokenizer"  # our folder name, the same as ComfyUI's bundled one
DIFFUSERS_TOKENIZER_FOLDERS = ("tokenizer_3", "tokenizer_2")  # SD3, Flux
COMFYUI_TOKENIZER_PATH = ("comfy", "text_encoders", "t5_tokenizer", TOKENIZER_JSON)

PAD_TOKEN_ID = 0
EOS_TOKEN_ID = 1
EXTRA_IDS = 100  # <extra_id_0> .. <extra_id_99>, appended after the SentencePiece vocabulary
_METASPACE = "\u2581"

# SentencePiece piece types (sentencepiece_model.proto)
_UNKNOWN, _CONTROL = 2, 3


class T5TokenizerFilesError(RuntimeError):
    """The T5 vocabulary was not found, or a file that should hold it does not."""


# ---- spiece.model: the protobuf fields we need --------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of one protobuf message: varints as int, everything else as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield number, value


@dataclass(frozen=True)
class SentencePieceModel:
    """What a SentencePiece ``ModelProto`` holds that the T5 pipeline needs."""

    pieces: list[tuple[str, float, int]]  # (piece, score, type)
    unk_id: int
    model_type: int  # 1 unigram, 2 BPE, 3 word, 4 char
    charsmap: bytes  # the normalizer's precompiled character map (empty: no normalization)


def read_sentencepiece_model(data: bytes) -> SentencePieceModel:
    """Parse ``ModelProto`` fields 1 (pieces), 2 (trainer spec: model_type 3, unk_id 40) and
    3 (normalizer spec: precompiled_charsmap 2), per sentencepiece's ``sentencepiece_model.proto``."""
    pieces: list[tuple[str, float, int]] = []
    unk_id, model_type, charsmap = 0, 1, b""
    for number, value in _fields(data):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            piece, score, kind = "", 0.0, 1
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    piece = v.decode("utf-8")
                elif n == 2 and isinstance(v, bytes):
                    score = struct.unpack("<f", v)[0]
                elif n == 3 and isinstance(v, int):
                    kind = v
            pieces.append((piece, score, kind))
        elif number == 2:
            for n, v in _fields(value):
                if n == 3 and isinstance(v, int):
                    model_type = v
                elif n == 40 and isinstance(v, int):
                    unk_id = v
        elif number == 3:
            for n, v in _fields(value):
                if n == 2 and isinstance(v, bytes):
                    charsmap = v
    return SentencePieceModel(pieces, unk_id, model_type, charsmap)


def tokenizer_from_spiece(path: str | os.PathLike[str]) -> Tokenizer:
    """Build the T5 ``tokenizers`` pipeline (see the module docstring) from a ``spiece.model``."""
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    try:
        spm = read_sentencepiece_model(Path(path).read_bytes())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise T5TokenizerFilesError(f"{path} is not a readable SentencePiece model: {exc}") from exc
    if spm.model_type != 1 or not spm.pieces:
        raise T5TokenizerFilesError(
            f"{path} is not a T5 SentencePiece vocabulary (expected a unigram model with pieces, got "
            f"model type {spm.model_type} with {len(spm.pieces)} pieces)"
        )
    _check_t5_specials([p for p, _, _ in spm.pieces], path)
    tokenizer = Tokenizer(Unigram([(p, s) for p, s, _ in spm.pieces], unk_id=spm.unk_id, byte_fallback=False))
    steps: list[Any] = [normalizers.Precompiled(spm.charsmap)] if spm.charsmap else []
    steps += [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), _METASPACE)]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="first")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", EOS_TOKEN_ID)]
    )
    specials = [p for p, _, kind in spm.pieces if kind in (_UNKNOWN, _CONTROL)]
    # <extra_id_99> gets the first id after the vocabulary, <extra_id_0> the last (the T5 convention).
    specials += [f"<extra_id_{i}>" for i in range(EXTRA_IDS - 1, -1, -1)]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    return tokenizer


def tokenizer_from_json(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a Hugging Face ``tokenizer.json`` and check that it is a T5 SentencePiece vocabulary."""
    from tokenizers import Tokenizer

    try:
        text = Path(path).read_text(encoding="utf-8")
        model_type = json.loads(text).get("model", {}).get("type")
        if model_type != "Unigram":
            raise ValueError(f"its model is {model_type!r}, not a SentencePiece Unigram")
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # OSError, JSON errors, tokenizers' own exceptions
        raise T5TokenizerFilesError(f"{path} is not a usable T5 tokenizer.json: {exc}") from exc
    _check_t5_specials([tokenizer.id_to_token(i) or "" for i in range(3)], path)
    # Prompts are padded and never truncated by our own code (ComfyUI's rule), whatever the file says.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _check_t5_specials(pieces: Sequence[str], path: str | os.PathLike[str]) -> None:
    if list(pieces[:2]) != ["<pad>", "</s>"]:
        raise T5TokenizerFilesError(
            f"{path}: ids 0 and 1 are {list(pieces[:2])}, expected ['<pad>', '</s>'] (the T5 vocabulary)"
        )


# ---- the tokenizer --------------------------------------------------------------------------------------


class T5Tokenizer:
    """Text -> T5 token ids (ComfyUI's ``T5XXLTokenizer`` semantics for the pieces of a prompt).

    ``__call__`` mirrors the ``transformers`` tokenizer call that the prompt code uses (``input_ids`` with
    the trailing ``</s>``), so ``prompt_weights.tokenize_prompt`` works on it unchanged.
    """

    pad_token_id = PAD_TOKEN_ID
    eos_token_id = EOS_TOKEN_ID

    def __init__(self, backend: Tokenizer, *, source: Path | None = None) -> None:
        self.backend = backend
        self.source = source

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` followed by ``</s>``."""
        return list(self.backend.encode(text, add_special_tokens=True).ids)

    def __call__(self, text: str, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


def _in_folder(folder: Path) -> Path | None:
    for name in (TOKENIZER_JSON, SPIECE_FILE):
        if (folder / name).is_file():
            return folder / name
    return None


def _comfy_package_tokenizer() -> Path | None:
    """ComfyUI's bundled file when its ``comfy`` package is on ``sys.path`` (found, not imported)."""
    try:
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location).joinpath(*COMFYUI_TOKENIZER_PATH[1:])
        if candidate.is_file():
            return candidate
    return None


def find_t5_vocabulary(
    *,
    path: str | os.PathLike[str] | None = None,
    diffusers_folder: str | os.PathLike[str] | None = None,
    text_encoder_file: str | os.PathLike[str] | None = None,
    text_encoder_folders: Sequence[str | os.PathLike[str]] = (),
    comfyui_roots: Sequence[str | os.PathLike[str]] = (),
    use_comfy_package: bool = True,
) -> Path:
    """The first ``tokenizer.json`` / ``spiece.model`` found, in the order of the module docstring.

    Pass the result to :func:`load_t5_tokenizer`. Raises :class:`T5TokenizerFilesError` naming every place
    looked at and the file to put where.
    """
    if path is not None and not Path(path).exists():
        raise T5TokenizerFilesError(f"the T5 tokenizer path {path} does not exist")
    places = [Path(path)] if path is not None else []
    if diffusers_folder is not None:
        places += [Path(diffusers_folder) / name for name in DIFFUSERS_TOKENIZER_FOLDERS]
    if text_encoder_file is not None:
        beside = Path(text_encoder_file).parent
        places += [beside / TOKENIZER_FOLDER, beside / SPIECE_FILE]
    places += [Path(folder) / TOKENIZER_FOLDER for folder in text_encoder_folders]
    places += [Path(root).joinpath(*COMFYUI_TOKENIZER_PATH) for root in comfyui_roots]
    for place in places:
        if place.is_file():
            return place
        if place.is_dir() and (found := _in_folder(place)) is not None:
            return found
    if use_comfy_package and (bundled := _comfy_package_tokenizer()) is not None:
        return bundled
    raise T5TokenizerFilesError(_missing_message(places, text_encoder_folders))


def _missing_message(places: Sequence[Path], text_encoder_folders: Sequence[str | os.PathLike[str]]) -> str:
    target = (
        Path(text_encoder_folders[0]) / TOKENIZER_FOLDER
        if text_encoder_folders
        else Path("models") / "text_encoders" / TOKENIZER_FOLDER
    )
    looked = "; ".join(str(p) for p in places) or "(no folders given)"
    return (
        f"The T5 tokenizer vocabulary was not found (looked in: {looked}). Put {SPIECE_FILE} -- the T5 v1.1 "
        f"SentencePiece vocabulary, e.g. tokenizer_3/{SPIECE_FILE} of the SD3 diffusers repository, "
        f"tokenizer_2/{SPIECE_FILE} of FLUX.1, or {SPIECE_FILE} of google/t5-v1_1-xxl -- or the matching "
        f"{TOKENIZER_JSON} (ComfyUI ships one in comfy/text_encoders/t5_tokenizer/) into {target}/"
    )


def load_t5_tokenizer(source: str | os.PathLike[str]) -> T5Tokenizer:
    """The T5 tokenizer from a ``tokenizer.json`` / ``spiece.model`` file, or a folder holding one
    (typically the result of :func:`find_t5_vocabulary`)."""
    found = Path(source)
    if found.is_dir():
        inside = _in_folder(found)
        if inside is None:
            raise T5TokenizerFilesError(f"{found} holds neither {TOKENIZER_JSON} nor {SPIECE_FILE}")
        found = inside
    backend = tokenizer_from_json(found) if found.suffix == ".json" else tokenizer_from_spiece(found)
    return T5Tokenizer(backend, source=found)
