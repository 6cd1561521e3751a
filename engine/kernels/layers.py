"""Layers whose forward goes through `engine.kernels` instead of torch's default kernel.

`FastLinear` and `FastConv2d` are an ``nn.Linear`` / ``nn.Conv2d`` (same parameters, state-dict keys,
``isinstance`` checks, hooks) whose forward calls `cpu_gemm.linear` / `cpu_conv.conv2d` when those apply
and torch's own forward otherwise. `use_fast_kernels(model)` converts a built model's plain layers in
place by switching their class, which moves no tensor and keeps every reference to the layer valid (weight
patches, cast hooks, adapters' forward hooks). The model manager does this for every model it registers.
Subclasses (a custom pack's quantised or casting layers) are left alone: their forward is theirs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels import cpu_conv, cpu_gemm


class FastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # While torch.compile traces, the plain call first: nothing for dynamo to look into.
        if torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)
        return cpu_gemm.linear(x, self.weight, self.bias)


class FastConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and cpu_conv.eligible(self, x):
            return cpu_conv.conv2d(self, x)
        return super().forward(x)


_FAST = {nn.Linear: FastLinear, nn.Conv2d: FastConv2d}


def use_fast_kernels(model: nn.Module) -> int:
    """Switch `model`'s plain Linear and Conv2d layers to their fast twins; returns how many were switched."""
    switched = 0
    for module in model.modules():
        fast = _FAST.get(type(module))
        if fast is not None:
            module.__class__ = fast
            switched += 1
    return switched


def release_kernel_caches(model: nn.Module) -> int:
    """Free what the fast layers keep between calls (packed conv weights); returns the bytes freed."""
    return cpu_conv.release(model)
