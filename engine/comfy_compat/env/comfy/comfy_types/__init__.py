"""ComfyUI's `comfy.comfy_types`: typing names packs import for their node classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypedDict

import torch

from .node_typing import IO, CheckLazyMixin, ComfyNodeABC, FileLocator, InputTypeDict


class UnetApplyFunction(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


class UnetApplyConds(TypedDict):
    c_concat: torch.Tensor | None
    c_crossattn: torch.Tensor | None
    control: torch.Tensor | None
    transformer_options: dict[str, Any] | None


class UnetParams(TypedDict):
    input: torch.Tensor
    timestep: torch.Tensor
    c: UnetApplyConds
    cond_or_uncond: list[int]


UnetWrapperFunction = Callable[[UnetApplyFunction, UnetParams], torch.Tensor]

__all__ = [
    "UnetWrapperFunction",
    "UnetApplyConds",
    "UnetParams",
    "UnetApplyFunction",
    "IO",
    "InputTypeDict",
    "ComfyNodeABC",
    "CheckLazyMixin",
    "FileLocator",
]
