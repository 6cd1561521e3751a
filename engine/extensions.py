"""What a node pack adds besides nodes: samplers and schedulers for the runtime's sampling library.

A pack calls `api.register_sampler(...)` / `api.register_scheduler(...)` while it is imported (the moment
ComfyUI packs extend `KSampler.SAMPLERS`). There is no global list to append to: the plugin loader opens
a collection around each pack's import (`collecting()`), and hands what the pack registered to the
runtime that is loading it. Torch-free, so `engine.api` can re-export the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

NoiseKind = Literal["none", "gaussian", "brownian"]


@dataclass(frozen=True)
class SamplerDeclaration:
    """A sampler function `fn(denoiser, x, sigmas, *, noise=None, callback=None, **options) -> x`.

    `noise`: the per-step noise the sampler draws ("none" for deterministic samplers, "gaussian" for
    ancestral ones, "brownian" for SDE solvers). `discard_penultimate_sigma`: compute one step more and
    drop the second-to-last sigma (as dpm_2 / uni_pc do). `options`: keyword options bound to `fn`.
    """

    name: str
    function: Callable[..., Any]
    noise: NoiseKind = "none"
    discard_penultimate_sigma: bool = False
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class SchedulerDeclaration:
    """A scheduler function `fn(model_sampling, steps) -> sigmas` (steps + 1 values, ending at 0)."""

    name: str
    function: Callable[..., Any]


@dataclass
class PackExtensions:
    samplers: list[SamplerDeclaration] = field(default_factory=list)
    schedulers: list[SchedulerDeclaration] = field(default_factory=list)


class ExtensionTarget(Protocol):
    """What receives a pack's extensions (the runtime's sampling library)."""

    def add_sampler(self, declaration: SamplerDeclaration) -> None: ...

    def add_scheduler(self, declaration: SchedulerDeclaration) -> None: ...


_collecting: ContextVar[PackExtensions | None] = ContextVar("diffgraph_pack_extensions", default=None)


@contextmanager
def collecting() -> Iterator[PackExtensions]:
    """Collect what is registered while a pack is imported (the loader wraps each import in this)."""
    extensions = PackExtensions()
    token = _collecting.set(extensions)
    try:
        yield extensions
    finally:
        _collecting.reset(token)


def _current(what: str) -> PackExtensions:
    extensions = _collecting.get()
    if extensions is None:
        raise RuntimeError(
            f"{what} must be called while a node pack is being loaded (at the pack's import time), "
            "so the runtime that loads the pack receives it"
        )
    return extensions


def register_sampler(
    name: str,
    function: Callable[..., Any],
    *,
    noise: NoiseKind = "none",
    discard_penultimate_sigma: bool = False,
    **options: Any,
) -> None:
    """Add a sampler to the sampling library of the runtime loading this pack; it appears in every
    sampler choice (KSampler, KSamplerAdvanced, KSamplerSelect) and in /object_info."""
    if noise not in ("none", "gaussian", "brownian"):
        raise ValueError(f"sampler {name!r}: noise must be 'none', 'gaussian' or 'brownian', not {noise!r}")
    declaration = SamplerDeclaration(name, function, noise, discard_penultimate_sigma, tuple(options.items()))
    _current("register_sampler").samplers.append(declaration)


def register_scheduler(name: str, function: Callable[..., Any]) -> None:
    """Add a scheduler to the sampling library of the runtime loading this pack (KSampler's and
    BasicScheduler's scheduler choices)."""
    _current("register_scheduler").schedulers.append(SchedulerDeclaration(name, function))
