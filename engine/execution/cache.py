"""The content-keyed output cache and the keys it is addressed by.

A node's key is a digest of its type and version, its constant inputs, its fingerprint (for things
outside the graph such as files) and the keys of the nodes feeding it (DESIGN.md §4). Node ids are not
part of the key, so the same loader in another workflow finds the same entry. Keys are fixed-size
digests rather than nested tuples so that a deep chain costs the same per node as a shallow one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def static_key_part(
    node_type: str, version: str, constants: Mapping[str, Any], node_id_if_unique: str | None
) -> bytes:
    """The part of a node's key that does not change between runs of the same validated workflow.

    repr of sorted items is canonical for JSON-like values and much cheaper than json.dumps.
    """
    parts = [node_type, version, repr(sorted(constants.items()))]
    if node_id_if_unique is not None:  # nodes that read their own id (UNIQUE_ID) are per-node
        parts.append(node_id_if_unique)
    return "\x1f".join(parts).encode()


def content_key(static_part: bytes, fingerprint: Any, input_keys: list[tuple[str, bytes, int]]) -> bytes:
    """Digest of the static part, the fingerprint and the (input name, source key, output index) triples.

    `input_keys` must be in a fixed order (sorted by input name) so equal graphs get equal keys.
    """
    digest = hashlib.blake2b(static_part, digest_size=16)
    digest.update(b"\x1e" + repr(fingerprint).encode())
    for name, key, index in input_keys:
        digest.update(b"\x1e" + name.encode() + b"\x1f" + key + index.to_bytes(4, "little"))
    return digest.digest()


@dataclass
class CachedResult:
    outputs: list[list[Any]]  # per output index, the list of values (list semantics, see executor)
    ui: dict[str, Any] | None
    nbytes: int = 0
    # An output holds an ExecutionBlocker (engine/execution/expansion.py): the executor then checks the
    # consumers' inputs for blockers, which it skips for every other node.
    blocked: bool = False


def estimate_nbytes(value: Any, depth: int = 0) -> int:
    """Bytes of tensors/arrays held by an output value. Models report 0: the model manager owns them."""
    if depth > 4:
        return 0
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # torch.Tensor
        return int(value.element_size() * value.nelement())
    if hasattr(value, "nbytes") and hasattr(value, "dtype"):  # numpy array
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(estimate_nbytes(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(estimate_nbytes(v, depth + 1) for v in value)
    return 0


class OutputCache:
    """Least-recently-used cache bounded by entry count and by estimated tensor bytes."""

    def __init__(self, max_entries: int = 1000, max_bytes: int | None = 8 * 1024**3):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, CachedResult] = OrderedDict()
        self.total_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> CachedResult | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: bytes, result: CachedResult) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.total_bytes -= old.nbytes
        if self.max_bytes is not None and result.nbytes > self.max_bytes:
            return  # larger than the whole budget: do not evict everything else for it
        self._entries[key] = result
        self.total_bytes += result.nbytes
        self._evict()

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries or (
            self.max_bytes is not None and self.total_bytes > self.max_bytes and len(self._entries) > 1
        ):
            _, evicted = self._entries.popitem(last=False)
            self.total_bytes -= evicted.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.total_bytes = 0
