"""Which worker runs a prompt: an idle one that already holds the prompt's models, else the least loaded.

Dispatch is late-bound: a prompt leaves the central queue only when a worker is idle, so "least loaded"
means an idle worker, and among equally suitable ones the one holding the fewest other models (so that
different models spread over the workers), then the one that has run the fewest prompts, then the one
idle the longest. A worker "holds" a model when its model
manager has the file's weights, on the compute device (worth most: no transfer at all) or offloaded to
RAM (a copy, no disk read); the worker reports both sets after every prompt.

Pure Python with no Ray: the queue calls these under its lock, and they are unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The suffixes of model files that loader nodes name (checkpoints, LoRAs, VAEs, ControlNets, upscalers,
# GGUF, ...). Matching the values of a prompt needs no folder listing and no knowledge of the node types.
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")

STARTING, IDLE, BUSY, LOST, DEAD = "starting", "idle", "busy", "lost", "dead"


def model_key(name: str) -> str:
    """How a model file is compared: the file name without folders (the model manager names the models it
    holds by the file's name; a prompt may give a subfolder, "sd15/model.safetensors")."""
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def needed_models(prompt: Mapping[str, Any]) -> frozenset[str]:
    """The model files a prompt names: widget values ending in a model file suffix."""
    found: set[str] = set()
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        for value in inputs.values():
            if isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                found.add(model_key(value))
    return frozenset(found)


@dataclass
class WorkerSlot:
    """The server's view of one worker actor (changed only under the queue's lock)."""

    index: int
    state: str = STARTING
    running: str | None = None  # prompt id
    on_device: frozenset[str] = frozenset()  # model files whose weights are on the compute device
    in_ram: frozenset[str] = frozenset()  # model files whose weights are offloaded to RAM
    prompts: int = 0  # prompts dispatched to it
    hits: int = 0  # of those, prompts whose models it already held
    idle_since: float = 0.0
    pid: int | None = None
    node: str | None = None
    device: str | None = None
    error: str | None = None  # why it is dead
    incarnation: int = 0  # bumped on every (re)start: keys its staged file names

    @property
    def held(self) -> frozenset[str]:
        return self.on_device | self.in_ram

    def affinity(self, needed: Collection[str]) -> int:
        """2 per needed model on the device, 1 per needed model in RAM."""
        return sum(2 if name in self.on_device else 1 if name in self.in_ram else 0 for name in needed)

    def holds_all(self, needed: Collection[str]) -> bool:
        return bool(needed) and all(name in self.held for name in needed)

    def learn(self, stats: Mapping[str, Any]) -> None:
        """Take the model sets and identity from a worker's stats (see actor.DiffgraphWorker.stats)."""
        models = stats.get("models") or {}
        self.on_device = frozenset(model_key(n) for n in models.get("device", ()))
        self.in_ram = frozenset(model_key(n) for n in models.get("ram", ()))
        self.pid = stats.get("pid", self.pid)
        self.node = stats.get("node", self.node)
        self.device = stats.get("device", self.device)


def choose(
    slots: Iterable[WorkerSlot], needed: Collection[str], exclude: Collection[int] = (), affinity: bool = True
) -> WorkerSlot | None:
    """The idle worker for a prompt needing `needed` (None when no worker outside `exclude` is idle).
    `affinity=False` ignores the models (the baseline the benchmark compares routing with)."""
    idle = [s for s in slots if s.state == IDLE and s.index not in exclude]
    if not idle:
        return None

    def rank(slot: WorkerSlot) -> tuple[int, int, int, float, int]:
        if not affinity:
            return (0, 0, slot.prompts, slot.idle_since, slot.index)
        # Equally suited workers: the one holding fewest other models, so that different models spread
        # over the workers and stay hot where they are (a worker is not made to hold everything).
        return (
            -slot.affinity(needed),
            len(slot.held - set(needed)),
            slot.prompts,
            slot.idle_since,
            slot.index,
        )

    return min(idle, key=rank)


@dataclass(frozen=True)
class Pending:
    """A queued prompt as the planner sees it (the first few of the queue, in queue order)."""

    needed: frozenset[str]
    exclude: frozenset[int] = frozenset()  # workers it must not go to (it died running there)
    skipped: int = 0  # times a later prompt went first


def plan(
    slots: Sequence[WorkerSlot], pending: Sequence[Pending], affinity: bool = True, max_skips: int = 4
) -> tuple[WorkerSlot, int] | None:
    """(worker, position in `pending`) for the next dispatch, or None when no worker can take the head.

    Normally the head of the queue goes to the worker `choose` picks. One exception keeps models hot: when
    that worker does not hold the head's models but a busy worker does, the head waits for it (at most
    `max_skips` times) and a later prompt whose models the idle worker holds goes first. Each client still
    receives its results in queue order (relay.py holds a later prompt's messages back)."""
    if not pending:
        return None
    head = pending[0]
    slot = choose(slots, head.needed, head.exclude, affinity)
    if slot is None:
        return None
    if not affinity or slot.holds_all(head.needed) or head.skipped >= max_skips:
        return slot, 0
    if not any(s.state == BUSY and s.holds_all(head.needed) for s in slots):
        return slot, 0  # nobody has the head's models hot: nothing to wait for
    for position, later in enumerate(pending[1:], start=1):
        if slot.index not in later.exclude and slot.holds_all(later.needed):
            return slot, position
    return slot, 0


@dataclass
class RoutingStats:
    """Dispatch figures: a hit is a prompt naming model files that all sat on the chosen worker already."""

    dispatched: int = 0
    with_models: int = 0  # prompts that name at least one model file
    hits: int = 0
    per_worker: dict[int, int] = field(default_factory=dict)

    def record(self, slot: WorkerSlot, needed: Collection[str]) -> bool:
        hit = slot.holds_all(needed)
        self.dispatched += 1
        self.with_models += 1 if needed else 0
        self.hits += 1 if hit else 0
        self.per_worker[slot.index] = self.per_worker.get(slot.index, 0) + 1
        return hit

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.with_models if self.with_models else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dispatched": self.dispatched,
            "with_models": self.with_models,
            "hits": self.hits,
            "hit_rate": self.hit_rate,
            "per_worker": dict(self.per_worker),
        }
