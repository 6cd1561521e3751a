"""Explicit registries of samplers and schedulers (plugins add entries; nothing is global).

``default_sampler_registry()`` / ``default_scheduler_registry()`` build fresh registries holding the
built-in entries with ComfyUI's KSampler names; the application keeps one and passes it around.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .model_sampling import ModelSampling
from .noise import BrownianTreeNoise, GaussianNoise, NoiseSource
from .schedulers import SchedulerFn, default_scheduler_table

SamplerFn = Callable[..., torch.Tensor]
NoiseKind = Literal["none", "gaussian", "brownian"]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    ``noise``: which per-step noise source the entry point must provide ("none" for deterministic
    samplers, "gaussian" for ancestral ones, "brownian" for SDE solvers that query the noise path
    at intermediate levels). ``discard_penultimate_sigma``: ComfyUI computes steps + 1 sigmas and drops
    the second-to-last for samplers (dpm_2, uni_pc) whose last step would otherwise be wasted.
    ``options``: default keyword options bound to the function (e.g. eta).
    """

    name: str
    fn: SamplerFn
    noise: NoiseKind = "none"
    discard_penultimate_sigma: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def make_noise(self, x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> NoiseSource | None:
        if self.noise == "gaussian":
            return GaussianNoise(x.shape, seed, dtype=x.dtype, device=x.device)
        if self.noise == "brownian":
            if not bool((sigmas > 0).any()):
                return None
            return BrownianTreeNoise.for_sigmas(x, sigmas, seed)
        return None

    def __call__(self, denoiser: Any, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        opts = dict(self.options)
        opts.update(kwargs)
        return self.fn(denoiser, x, sigmas, **opts)


class SamplerRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, SamplerSpec] = {}

    def register(self, spec: SamplerSpec, *, replace: bool = False) -> None:
        if spec.name in self._specs and not replace:
            raise ValueError(f"sampler {spec.name!r} is already registered; pass replace=True to override it")
        self._specs[spec.name] = spec

    def get(self, name: str) -> SamplerSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown sampler {name!r}; known samplers: {', '.join(self._specs)}") from None

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[SamplerSpec]:
        return iter(self._specs.values())


class SchedulerRegistry:
    def __init__(self) -> None:
        self._fns: dict[str, SchedulerFn] = {}

    def register(self, name: str, fn: SchedulerFn, *, replace: bool = False) -> None:
        if name in self._fns and not replace:
            raise ValueError(f"scheduler {name!r} is already registered; pass replace=True to override it")
        self._fns[name] = fn

    def get(self, name: str) -> SchedulerFn:
        try:
            return self._fns[name]
        except KeyError:
            raise KeyError(f"unknown scheduler {name!r}; known schedulers: {', '.join(self._fns)}") from None

    def names(self) -> list[str]:
        return list(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def sigmas(self, name: str, model_sampling: ModelSampling, steps: int) -> torch.Tensor:
        return self.get(name)(model_sampling, steps)


def default_sampler_registry() -> SamplerRegistry:
    """A registry with the built-in samplers, in ComfyUI's KSampler order."""
    from .samplers import dpmpp, euler, multistep

    reg = SamplerRegistry()
    for spec in (
        SamplerSpec("euler", euler.sample_euler),
        SamplerSpec("euler_ancestral", euler.sample_euler_ancestral, "gaussian"),
        SamplerSpec("heun", euler.sample_heun),
        SamplerSpec("dpm_2", euler.sample_dpm_2, discard_penultimate_sigma=True),
        SamplerSpec(
            "dpm_2_ancestral", euler.sample_dpm_2_ancestral, "gaussian", discard_penultimate_sigma=True
        ),
        SamplerSpec("lms", multistep.sample_lms),
        SamplerSpec("dpmpp_2s_ancestral", dpmpp.sample_dpmpp_2s_ancestral, "gaussian"),
        SamplerSpec("dpmpp_sde", dpmpp.sample_dpmpp_sde, "brownian"),
        SamplerSpec("dpmpp_2m", dpmpp.sample_dpmpp_2m),
        SamplerSpec("dpmpp_2m_sde", dpmpp.sample_dpmpp_2m_sde, "brownian"),
        SamplerSpec("dpmpp_3m_sde", dpmpp.sample_dpmpp_3m_sde, "brownian"),
        SamplerSpec("lcm", euler.sample_lcm, "gaussian"),
        SamplerSpec("ddim", euler.sample_ddim),
        SamplerSpec("uni_pc", multistep.sample_uni_pc, discard_penultimate_sigma=True),
        SamplerSpec("uni_pc_bh2", multistep.sample_uni_pc_bh2, discard_penultimate_sigma=True),
    ):
        reg.register(spec)
    return reg


def default_scheduler_registry() -> SchedulerRegistry:
    reg = SchedulerRegistry()
    for name, fn in default_scheduler_table().items():
        reg.register(name, fn)
    return reg
