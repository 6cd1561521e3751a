"""Toy models for the sampling tests (real torch modules with the UNet forward contract)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from engine.handles.sampling import SamplingLibrary
from engine.runtime import sampling_library


class PointwiseUNet(nn.Module):
    """eps = a·x_in + mean(context) + b·t/1000 (+ y and concat terms), elementwise in space.

    Pointwise in space, so evaluating it on a crop equals cropping the full-frame evaluation, and
    invariant to repeating the token sequence (like cross-attention). Records every call.
    """

    def __init__(self, in_channels: int = 4, a: float = 0.1, b: float = 0.05) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.0))
        self.in_channels = in_channels
        self.a, self.b = a, b
        self.calls: list[dict[str, Any]] = []

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None):
        self.calls.append(
            {
                "x": x.clone(),
                "t": timesteps.clone(),
                "context": None if context is None else context.clone(),
                "y": None if y is None else y.clone(),
                "control": control,
                "topts": transformer_options,
            }
        )
        assert x.shape[1] == self.in_channels, f"UNet got {x.shape[1]} channels, expects {self.in_channels}"
        lat = x[:, :4]
        out = self.a * lat * self.weight + self.b * (timesteps.float() / 1000.0).view(-1, 1, 1, 1)
        if context is not None:
            out = out + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        if y is not None:
            out = out + y.mean(dim=1).view(-1, 1, 1, 1)
        if x.shape[1] > 4:
            out = out + 0.3 * x[:, 4:5] + 0.01 * x[:, 5:].sum(dim=1, keepdim=True)
        return out


class GaussianDataUNet(nn.Module):
    """The exact eps-predictor for data x0 ~ N(mu, s²) elementwise, mu = mean of the context.

    D(x, sigma) = mu + s²/(s² + sigma²)(x − mu) (posterior mean), eps = (x − D)/sigma, where x is
    the VE latent = x_in·sqrt(1 + sigma²). ``sigma_of_t`` converts the UNet's timestep back.
    """

    def __init__(self, sigma_of_t, s: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.0))
        self.sigma_of_t = sigma_of_t
        self.s = s
        self.ncalls = 0

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None):
        self.ncalls += 1
        sig = self.sigma_of_t(timesteps.double()).to(x.dtype).view(-1, 1, 1, 1)
        xv = x * torch.sqrt(1 + sig * sig)
        mu = context.mean(dim=(1, 2)).view(-1, 1, 1, 1) if context is not None else 0.0
        den = mu + self.s**2 / (self.s**2 + sig * sig) * (xv - mu)
        return (xv - den) / sig * self.weight


@pytest.fixture
def pointwise_unet():
    return PointwiseUNet


@pytest.fixture
def gaussian_unet():
    return GaussianDataUNet


def cond(value: float, tokens: int = 77, dim: int = 8, batch: int = 1, **opts: Any) -> list:
    return [torch.full((batch, tokens, dim), float(value)), dict(opts)]


@pytest.fixture
def make_cond():
    return cond


@pytest.fixture
def library() -> SamplingLibrary:
    """The sampler/scheduler library exactly as the runtime builds it, fresh for each test."""
    return sampling_library()


@pytest.fixture
def regs(library: SamplingLibrary) -> dict[str, Any]:
    """The registries as keyword arguments of ksampler.sample / calculate_sigmas / ksampler_sigmas."""
    return {"samplers": library.samplers, "schedulers": library.schedulers}


@pytest.fixture
def isclose():
    return math.isclose


@pytest.fixture(autouse=True)
def _single_thread():
    """These tests use small tensors; on a shared, loaded 2-core machine torch's intra-op threads
    mostly wait on each other (10-20x slower), so run them single-threaded and restore after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
