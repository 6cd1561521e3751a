"""Shared helpers for the memory tests: a tiny layer-stack factory and the CPU device info."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.memory.devices import DeviceInfo

WIDTH = 32


def linear_stack(n: int = 6, *, seed: int = 0, width: int = WIDTH) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers).eval()


@pytest.fixture
def cpu_info() -> DeviceInfo:
    return DeviceInfo.cpu()


@pytest.fixture
def make_linear_stack():
    return linear_stack
