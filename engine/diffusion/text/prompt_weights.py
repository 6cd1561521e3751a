"""Prompt emphasis syntax, embedding references and 77-token chunking, with ComfyUI's semantics.

Syntax (the one ComfyUI's ``comfy/sd1_clip.py`` implements, which follows the A1111 convention):

- ``(text)`` multiplies the weight of ``text`` by 1.1; nested groups multiply: ``((text))`` is 1.21.
- ``(text:1.3)`` sets the weight of ``text`` to 1.3. The number after the *last* colon of the group is
  absolute, not multiplied by enclosing groups (``((a:1.5))`` is 1.5) -- that is ComfyUI's rule (A1111
  would multiply). A group whose text after the last colon is not a finite number is a plain ``(text)``
  group, so ``(embedding:foo)`` is ``embedding:foo`` at 1.1.
- ``\\(`` and ``\\)`` are literal parentheses.
- Parentheses are matched by counting; an unmatched ``(`` keeps its text literal (at the enclosing weight),
  an unmatched ``)`` makes it and the rest of the text literal, as ComfyUI does.
- ``embedding:name`` at the start of a weighted segment or after a space/newline refers to a
  textual-inversion embedding; ``name`` ends at the next whitespace. If ``name`` is unknown and ends with
  commas, the name without them is tried and the commas stay in the text.

Chunking (ComfyUI's ``SDTokenizer.tokenize_with_weights``): CLIP sees 77 positions, BOS + 75 tokens + EOS.
Text between embedding references is tokenized as one group; groups are packed into chunks of 75. A
group that does not fit in the current chunk moves whole into the next one when it is shorter than 8
tokens (the current chunk is closed with EOS and padded); longer groups are split at the boundary. Each
chunk is ``[BOS] tokens [EOS] [pad]*``; special tokens have weight 1.0. The pad id differs per encoder
(49407 for OpenAI CLIP-L as in SD1's HF tokenizer, 0 for the OpenCLIP ViT-H/bigG tokenizer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .tokenizer import BOS_TOKEN_ID, EOS_TOKEN_ID

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from .t5_tokenizer import T5Tokenizer

CHUNK_LENGTH = 77  # CLIP's context length (positional embeddings)
EMBEDDING_PREFIX = "embedding:"
# A group at least this long may be split across two chunks; shorter ones are kept together.
MAX_UNSPLIT_GROUP = 8

# Escaped parentheses are swapped for private-use characters while parsing, then restored.
_ESC_OPEN = "\ue000"
_ESC_CLOSE = "\ue001"


@dataclass(frozen=True)
class EmbeddingSlot:
    """Position of one vector of a textual-inversion embedding inside a token sequence."""

    name: str
    index: int


Token = int | EmbeddingSlot
WeightedToken = tuple[Token, float]

# Called with an embedding name; returns how many vectors it has, or None when it cannot be used.
EmbeddingResolver = Callable[[str], int | None]


@dataclass
class TokenizedPrompt:
    """Token groups of a prompt, before chunking, and the embedding references that were skipped."""

    groups: list[list[WeightedToken]]
    missing_embeddings: list[str] = field(default_factory=list)

    def chunks(self, *, pad_token_id: int) -> list[list[WeightedToken]]:
        return chunk_token_groups(self.groups, pad_token_id=pad_token_id)


def _escape(text: str) -> str:
    return text.replace("\\)", _ESC_CLOSE).replace("\\(", _ESC_OPEN)


def _unescape(text: str) -> str:
    return text.replace(_ESC_CLOSE, ")").replace(_ESC_OPEN, "(")


def _split_top_level(text: str) -> list[str]:
    """Split into plain runs and ``(...)`` groups at nesting depth 0 (depth counted like ComfyUI)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0 and current:
                items.append("".join(current))
                current = []
            current.append(ch)
            depth += 1
        elif ch == ")":
            depth -= 1
            current.append(ch)
            if depth == 0:
                items.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        items.append("".join(current))
    return items


def _explicit_weight(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for item in _split_top_level(text):
        if len(item) >= 2 and item[0] == "(" and item[-1] == ")":
            inner = item[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                explicit = _explicit_weight(inner[colon + 1 :])
                if explicit is not None:
                    inner_weight = explicit
                    inner = inner[:colon]
            out.extend(_weights(inner, inner_weight))
        else:
            out.append((item, weight))
    return out


def parse_prompt_weights(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` segments; escapes are resolved in the returned text.

    >>> parse_prompt_weights("a (red:1.5) ((cat))")
    [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('cat', 1.2100000000000002)]
    """
    return [(_unescape(text), weight) for text, weight in _weights(_escape(prompt), 1.0) if text]


_EMBEDDING_SPLIT = re.compile(r"[ \n]" + re.escape(EMBEDDING_PREFIX))


def _split_embedding_refs(segment: str) -> list[str]:
    """Split a segment before each ``embedding:`` that starts it or follows a space/newline."""
    pieces = _EMBEDDING_SPLIT.split(segment)
    return [pieces[0]] + [EMBEDDING_PREFIX + p for p in pieces[1:]]


def tokenize_prompt(
    prompt: str,
    tokenizer: CLIPTokenizer | T5Tokenizer,
    *,
    resolve_embedding: EmbeddingResolver | None = None,
    has_start_token: bool = True,
) -> TokenizedPrompt:
    """Parse weights and embedding references and tokenize each piece (without BOS/EOS).

    ``resolve_embedding``: None treats ``embedding:name`` as plain text (as ComfyUI does without an
    embeddings folder); otherwise it is asked for the number of vectors of each referenced name.
    ``has_start_token``: whether the tokenizer puts a start token before the ids (CLIP does, T5 only
    appends ``</s>``).
    """
    first = 1 if has_start_token else 0
    result = TokenizedPrompt(groups=[])
    for segment, weight in parse_prompt_weights(prompt):
        for piece in _split_embedding_refs(segment):
            if not piece:
                continue
            text = piece
            if resolve_embedding is not None and piece.startswith(EMBEDDING_PREFIX):
                words = piece[len(EMBEDDING_PREFIX) :].strip("\n").split()
                name = words[0] if words else ""
                rest = " ".join(words[1:])
                count = resolve_embedding(name) if name else None
                if count is None and name.rstrip(",") not in ("", name):
                    stripped = name.rstrip(",")
                    count = resolve_embedding(stripped)
                    if count is not None:
                        rest = f"{name[len(stripped) :]} {rest}"
                        name = stripped
                if count is None:
                    result.missing_embeddings.append(name)
                else:
                    result.groups.append([(EmbeddingSlot(name, i), weight) for i in range(count)])
                text = rest
                if not text:
                    continue
            ids = tokenizer(text, truncation=False, verbose=False)["input_ids"]
            # The tokenizer adds BOS/EOS; the chunker adds its own per chunk.
            body = [int(t) for t in ids[first:-1]]
            if body:
                result.groups.append([(t, weight) for t in body])
    return result


def chunk_token_groups(
    groups: Sequence[Sequence[WeightedToken]],
    *,
    pad_token_id: int,
    length: int = CHUNK_LENGTH,
    bos_token_id: int = BOS_TOKEN_ID,
    eos_token_id: int = EOS_TOKEN_ID,
) -> list[list[WeightedToken]]:
    """Pack token groups into ``[BOS] ... [EOS] [pad]*`` chunks of exactly ``length`` tokens.

    Always returns at least one chunk (an empty prompt is ``[BOS, EOS, pad, ...]``).
    """
    capacity = length - 2
    chunks: list[list[WeightedToken]] = []
    body: list[WeightedToken] = []

    def close() -> None:
        chunk: list[WeightedToken] = [(bos_token_id, 1.0), *body, (eos_token_id, 1.0)]
        chunk.extend([(pad_token_id, 1.0)] * (length - len(chunk)))
        chunks.append(chunk)

    for group in groups:
        remaining = list(group)
        splittable = len(remaining) >= MAX_UNSPLIT_GROUP
        while remaining:
            free = capacity - len(body)
            if len(remaining) <= free:
                body.extend(remaining)
                break
            if splittable:
                body.extend(remaining[:free])
                remaining = remaining[free:]
            close()
            body = []
    close()
    return chunks
