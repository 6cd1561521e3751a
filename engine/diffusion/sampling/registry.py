"""Explicit registries of samplers and schedulers (plugins add entries; nothing is global).

``default_sampler_registry()`` / ``default_scheduler_registry()`` build fresh registries holding the
built-in entries with ComfyUI's KSampler names. Only the runtime calls them
(engine.runtime.sampling_library, once at start-up); everything else is handed that one library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
    at intermediate levels). ``noise_on_device``: build the Brownian tree on the latent's device
    rather than the CPU (ComfyUI's ``*_gpu`` samplers; on a CPU latent identical to the plain one).
    ``discard_penultimate_sigma``: ComfyUI computes steps + 1 sigmas and drops the second-to-last for
    samplers (dpm_2, uni_pc) whose last step would otherwise be wasted. ``random_inpaint_noise``: when
    inpainting, re-noise the kept region with a draw from seed + 1 instead of the initial noise
    (ComfyUI does this for ddim). ``options``: default keyword options bound to the function (e.g. eta).
    """

    name: str
    fn: SamplerFn
    noise: NoiseKind = "none"
    discard_penultimate_sigma: bool = False
    options: tuple[tuple[str, Any], ...] = ()
    noise_on_device: bool = False
    random_inpaint_noise: bool = False

    def make_noise(
        self, x: torch.Tensor, sigmas: torch.Tensor, seed: int | Sequence[int]
    ) -> NoiseSource | None:
        """The per-step noise ComfyUI's sampler of this name draws for ``seed``: a generator on x's
        device for "gaussian", a torchsde Brownian tree over the schedule's sigma range for
        "brownian" (a sequence of seeds: one tree per batch item)."""
        if self.noise == "gaussian":
            if not isinstance(seed, int):
                raise TypeError(f"sampler {self.name!r} draws its noise from one seed, got {seed!r}")
            return GaussianNoise.like(x, seed)
        if self.noise == "brownian":
            if not bool((sigmas > 0).any()):
                return None
            return BrownianTreeNoise.for_sigmas(x, sigmas, seed, cpu=not self.noise_on_device)
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
    from .samplers import (
        adaptive,
        cfg_pp,
        deis,
        dpmpp,
        euler,
        ipndm,
        multistep,
        res_multistep,
        sa_solver,
        seeds,
    )

    res = res_multistep

    reg = SamplerRegistry()
    heun = (("solver_type", "heun"),)
    for spec in (
        SamplerSpec("euler", euler.sample_euler),
        SamplerSpec("euler_cfg_pp", cfg_pp.sample_euler_cfg_pp),
        SamplerSpec("euler_ancestral", euler.sample_euler_ancestral, "gaussian"),
        SamplerSpec("euler_ancestral_cfg_pp", cfg_pp.sample_euler_ancestral_cfg_pp, "gaussian"),
        SamplerSpec("heun", euler.sample_heun),
        SamplerSpec("heunpp2", ipndm.sample_heunpp2),
        SamplerSpec("dpm_2", euler.sample_dpm_2, discard_penultimate_sigma=True),
        SamplerSpec(
            "dpm_2_ancestral", euler.sample_dpm_2_ancestral, "gaussian", discard_penultimate_sigma=True
        ),
        SamplerSpec("lms", multistep.sample_lms),
        SamplerSpec("dpm_fast", adaptive.sample_dpm_fast, "gaussian"),
        SamplerSpec("dpm_adaptive", adaptive.sample_dpm_adaptive, "gaussian"),
        SamplerSpec("dpmpp_2s_ancestral", dpmpp.sample_dpmpp_2s_ancestral, "gaussian"),
        SamplerSpec("dpmpp_2s_ancestral_cfg_pp", cfg_pp.sample_dpmpp_2s_ancestral_cfg_pp, "gaussian"),
        SamplerSpec("dpmpp_sde", dpmpp.sample_dpmpp_sde, "brownian"),
        SamplerSpec("dpmpp_sde_gpu", dpmpp.sample_dpmpp_sde, "brownian", noise_on_device=True),
        SamplerSpec("dpmpp_2m", dpmpp.sample_dpmpp_2m),
        SamplerSpec("dpmpp_2m_cfg_pp", cfg_pp.sample_dpmpp_2m_cfg_pp),
        SamplerSpec("dpmpp_2m_sde", dpmpp.sample_dpmpp_2m_sde, "brownian"),
        SamplerSpec("dpmpp_2m_sde_gpu", dpmpp.sample_dpmpp_2m_sde, "brownian", noise_on_device=True),
        SamplerSpec("dpmpp_2m_sde_heun", dpmpp.sample_dpmpp_2m_sde, "brownian", options=heun),
        SamplerSpec(
            "dpmpp_2m_sde_heun_gpu",
            dpmpp.sample_dpmpp_2m_sde,
            "brownian",
            options=heun,
            noise_on_device=True,
        ),
        SamplerSpec("dpmpp_3m_sde", dpmpp.sample_dpmpp_3m_sde, "brownian"),
        SamplerSpec("dpmpp_3m_sde_gpu", dpmpp.sample_dpmpp_3m_sde, "brownian", noise_on_device=True),
        SamplerSpec("ddpm", euler.sample_ddpm, "gaussian"),
        SamplerSpec("lcm", euler.sample_lcm, "gaussian"),
        SamplerSpec("ipndm", ipndm.sample_ipndm),
        SamplerSpec("ipndm_v", ipndm.sample_ipndm_v),
        SamplerSpec("deis", deis.sample_deis),
        # res_multistep draws noise at scale 0 in ComfyUI (eta = 0): no source needed for that.
        SamplerSpec("res_multistep", res.sample_res_multistep),
        SamplerSpec("res_multistep_cfg_pp", res.sample_res_multistep_cfg_pp),
        SamplerSpec("res_multistep_ancestral", res.sample_res_multistep_ancestral, "gaussian"),
        SamplerSpec("res_multistep_ancestral_cfg_pp", res.sample_res_multistep_ancestral_cfg_pp, "gaussian"),
        SamplerSpec("gradient_estimation", res.sample_gradient_estimation),
        SamplerSpec("gradient_estimation_cfg_pp", res.sample_gradient_estimation_cfg_pp),
        SamplerSpec("er_sde", seeds.sample_er_sde, "gaussian"),
        SamplerSpec("seeds_2", seeds.sample_seeds_2, "gaussian"),
        SamplerSpec("seeds_3", seeds.sample_seeds_3, "gaussian"),
        SamplerSpec("sa_solver", sa_solver.sample_sa_solver, "gaussian"),
        SamplerSpec("sa_solver_pece", sa_solver.sample_sa_solver_pece, "gaussian"),
        SamplerSpec("ddim", euler.sample_ddim, random_inpaint_noise=True),
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
