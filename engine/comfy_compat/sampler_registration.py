"""How ComfyUI packs add samplers and schedulers, mapped onto the runtime's sampling library.

ComfyUI keeps module-level lists and dicts that packs extend at import time:
* `KSampler.SAMPLERS` / `SAMPLER_NAMES` / `KSAMPLER_NAMES`: a pack appends a name and sets
  `comfy.k_diffusion.sampling.sample_<name>` (ComfyUI's ksampler(name) finds the function by that name);
* `SCHEDULER_HANDLERS[name] = SchedulerHandler(fn, use_ms)` and `SCHEDULER_NAMES.append(name)`.

Here those lists are `LiveNames` over the library, and adding a name registers a sampler / scheduler with
the library at once, whose function is looked up when it runs - so the order in which a pack appends the
name and sets the function does not matter, and the new name appears in every sampler combo, in
/object_info and in `KSampler.SAMPLERS`, as in ComfyUI.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, NamedTuple

import torch

from engine.comfy_compat.sampling_bridge import ComfyKSampler

log = logging.getLogger(__name__)

K_DIFFUSION_MODULE = "comfy.k_diffusion.sampling"


class SchedulerHandler(NamedTuple):
    """ComfyUI's scheduler entry: `handler(model_sampling, steps)` when `use_ms`, else
    `handler(n=steps, sigma_min=..., sigma_max=...)`."""

    handler: Callable[..., torch.Tensor]
    use_ms: bool = True


def run_handler(handler: SchedulerHandler, model_sampling: Any, steps: int) -> torch.Tensor:
    if handler.use_ms:
        return handler.handler(model_sampling, steps)
    return handler.handler(
        n=steps, sigma_min=float(model_sampling.sigma_min), sigma_max=float(model_sampling.sigma_max)
    )


def _pack_sampler_function(name: str) -> Callable[..., torch.Tensor]:
    """ComfyUI's lookup of a pack's sampler: `comfy.k_diffusion.sampling.sample_<name>`, when it runs."""

    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        module = sys.modules.get(K_DIFFUSION_MODULE)
        function = vars(module).get(f"sample_{name}") if module is not None else None
        if function is None:
            raise ValueError(
                f"sampler {name!r} was added to KSampler.SAMPLERS but no function "
                f"comfy.k_diffusion.sampling.sample_{name} was defined"
            )
        return function(*args, **kwargs)  # type: ignore[no-any-return]

    run.__name__ = f"sample_{name}"
    return run


def add_sampler_name(library: Any, name: str) -> None:
    """Register `name` (a pack's sampler, its function set on comfy.k_diffusion.sampling)."""
    if name in library.samplers:
        return
    library.samplers.register(ComfyKSampler(_pack_sampler_function(name), name=name))


def add_sampler_object(library: Any, name: str, sampler: Any) -> None:
    """Register a KSAMPLER object a pack built under `name`."""
    if name in library.samplers:
        log.warning("sampler %r is already registered; the pack's sampler of that name is not used", name)
        return
    library.samplers.register(sampler)


class SchedulerHandlers(MutableMapping[str, SchedulerHandler]):
    """ComfyUI's SCHEDULER_HANDLERS over the library: every scheduler has an entry; a pack's new entry
    registers the scheduler (an existing name is not replaced: the log says so)."""

    def __init__(self, library: Any) -> None:
        self.library = library
        self.written: dict[str, SchedulerHandler] = {}

    def __getitem__(self, name: str) -> SchedulerHandler:
        if name in self.written:
            return self.written[name]
        if name not in self.library.schedulers:
            raise KeyError(name)
        fn = self.library.schedulers.get(name)
        return SchedulerHandler(fn, True)

    def __iter__(self) -> Iterator[str]:
        return iter(self.library.scheduler_names())

    def __len__(self) -> int:
        return len(self.library.scheduler_names())

    def __setitem__(self, name: str, handler: Any) -> None:
        if not isinstance(handler, SchedulerHandler):
            handler = SchedulerHandler(*handler) if isinstance(handler, tuple) else SchedulerHandler(handler)
        if name in self.library.schedulers and name not in self.written:
            log.warning("scheduler %r is already registered; a pack's handler of that name is not used", name)
            return
        self.written[name] = handler
        self.add_name(name)

    def __delitem__(self, name: str) -> None:
        log.warning("a pack deleted scheduler %r; diffgraph keeps it registered", name)

    def add_name(self, name: str) -> None:
        """Register `name` with the library; its handler is read from this mapping when it runs."""
        if name in self.library.schedulers:
            return

        def schedule(model_sampling: Any, steps: int) -> torch.Tensor:
            handler = self.written.get(name)
            if handler is None:
                raise ValueError(
                    f"scheduler {name!r} was added to SCHEDULER_NAMES but has no SCHEDULER_HANDLERS entry"
                )
            return run_handler(handler, model_sampling, steps)

        self.library.schedulers.register(name, schedule)
