"""ComfyUI's comfy.k_diffusion.sampling for custom packs: diffgraph's samplers in the k-diffusion calling
convention (`sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)`), the
schedule helpers and the noise samplers.

`sample_<name>` exists for every sampler of the runtime's sampling library (a pack's included), looked up
when it is read. A pack may also set `sample_<name>` here and add the name to comfy.samplers'
KSampler.SAMPLERS: the sampler then runs that function (see comfy.samplers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from engine.comfy_compat import sampling_bridge as _bridge
from engine.comfy_compat.binding import current as _current
from engine.diffusion.sampling import schedulers as _schedulers
from engine.diffusion.sampling.noise import BrownianTreeNoise as _BrownianTreeNoise
from engine.diffusion.sampling.samplers._common import ancestral_step as _ancestral_step
from engine.execution.context import SAMPLERS as _SAMPLERS

from .utils import append_dims, append_zero

__all__ = [
    "BatchedBrownianTree",
    "BrownianTreeNoiseSampler",
    "append_dims",
    "append_zero",
    "default_noise_sampler",
    "get_ancestral_step",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_laplace",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "to_d",
]

_library = _current().services[_SAMPLERS]


def __getattr__(name: str) -> Any:
    """`sample_<name>` for a sampler of the runtime's library (ComfyUI's k-diffusion functions)."""
    if name.startswith("sample_") and name[len("sample_") :] in _library.samplers:
        return _bridge.comfy_style(_library.sampler(name[len("sample_") :]))
    raise AttributeError(f"module 'comfy.k_diffusion.sampling' has no attribute {name!r}")


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: Any = "cpu"
) -> torch.Tensor:
    return _schedulers.karras_sigmas(int(n), float(sigma_min), float(sigma_max), rho).float().to(device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device: Any = "cpu") -> torch.Tensor:
    return _schedulers.exponential_sigmas(int(n), float(sigma_min), float(sigma_max)).float().to(device)


def get_sigmas_polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device: Any = "cpu"
) -> torch.Tensor:
    return _bridge.polyexponential_sigmas(int(n), float(sigma_min), float(sigma_max), rho).to(device)


def get_sigmas_vp(
    n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device: Any = "cpu"
) -> torch.Tensor:
    return _bridge.vp_sigmas(int(n), beta_d, beta_min, eps_s).to(device)


def get_sigmas_laplace(
    n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5, device: Any = "cpu"
) -> torch.Tensor:
    return _bridge.laplace_sigmas(int(n), float(sigma_min), float(sigma_max), mu, beta).to(device)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative (x − denoised) / sigma, sigma broadcast per batch item."""
    return (x - denoised) / append_dims(torch.as_tensor(sigma, device=x.device), x.ndim)


def get_ancestral_step(sigma_from: Any, sigma_to: Any, eta: float = 1.0) -> tuple[Any, Any]:
    """(sigma_down, sigma_up) of an ancestral step (diffgraph's formula, scalars or 0-d tensors)."""
    if not eta:
        return sigma_to, 0.0
    if isinstance(sigma_from, torch.Tensor) or isinstance(sigma_to, torch.Tensor):
        up = torch.minimum(
            torch.as_tensor(sigma_to),
            eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5,
        )
        return (sigma_to**2 - up**2) ** 0.5, up
    return _ancestral_step(float(sigma_from), float(sigma_to), eta)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> Callable[[Any, Any], torch.Tensor]:
    """Independent N(0, 1) draws shaped like x from a generator on x's device seeded with `seed`."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed))

    def noise(sigma: Any, sigma_next: Any) -> torch.Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return noise


class BrownianTreeNoiseSampler:
    """Normalised Brownian increments between two noise levels (torchsde's BrownianTree, seeded), as the
    SDE samplers use; `transform` maps sigmas to the tree's time (identity by default)."""

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: Any,
        sigma_max: Any,
        seed: Any = None,
        transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        cpu: bool = False,
    ) -> None:
        self.transform = transform
        lo = transform(torch.as_tensor(sigma_min))
        hi = transform(torch.as_tensor(sigma_max))
        self._tree = _BrownianTreeNoise(x, lo, hi, 0 if seed is None else seed, cpu=cpu)

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        return self._tree(self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next)))


class BatchedBrownianTree:
    """The Brownian motion itself: `tree(t0, t1)` is W(t1) − W(t0) (not normalised), one tree per seed
    when given a list of seeds (one per batch item); on the CPU unless `cpu=False`."""

    def __init__(self, x: torch.Tensor, t0: Any, t1: Any, seed: Any = None, **kwargs: Any) -> None:
        seeds = list(seed) if isinstance(seed, tuple | list) else (0 if seed is None else seed)
        self._tree = _BrownianTreeNoise(x, t0, t1, seeds, cpu=kwargs.get("cpu", True))

    def __call__(self, t0: Any, t1: Any) -> torch.Tensor:
        a, b = torch.as_tensor(t0), torch.as_tensor(t1)
        return self._tree(a, b) * (b - a).abs().sqrt()
