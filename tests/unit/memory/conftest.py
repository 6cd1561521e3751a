"""Shared helpers for the memory tests: a tiny layer-stack factory and the CPU device info."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.kernels.layers import use_fast_kernels
from engine.memory.devices import DeviceInfo

WIDTH = 32


def linear_stack(n: int = 6, *, seed: int = 0, width: int = WIDTH) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(width, width), nn.GELU()]
    model = nn.Sequential(*layers).eval()
    use_fast_kernels(model)  # as the model manager runs it (references must use the same kernels)
    return model


@pytest.fixture
def cpu_info() -> DeviceInfo:
    return DeviceInfo.cpu()


@pytest.fixture
def make_linear_stack():
    return linear_stack
