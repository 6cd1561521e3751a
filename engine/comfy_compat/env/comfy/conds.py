"""ComfyUI's comfy.conds for custom packs: the wrappers ComfyUI puts around model inputs carried by a
conditioning ("model_conds"), with their batching rules. diffgraph's sampler does not read these; they
exist so packs that build or inspect them (AnimateDiff's c_concat) import and run."""

from __future__ import annotations

import math
from typing import Any

import torch


def _repeat_to(t: torch.Tensor, batch_size: int) -> torch.Tensor:
    if t.shape[0] == batch_size:
        return t
    repeats = math.ceil(batch_size / t.shape[0])
    return t.repeat((repeats,) + (1,) * (t.ndim - 1))[:batch_size]


class CONDRegular:
    """A tensor input, repeated to the batch and concatenated with others of the same shape."""

    def __init__(self, cond: Any) -> None:
        self.cond = cond

    def _copy_with(self, cond: Any) -> CONDRegular:
        return self.__class__(cond)

    def process_cond(self, batch_size: int, **kwargs: Any) -> CONDRegular:
        return self._copy_with(_repeat_to(self.cond, batch_size))

    def can_concat(self, other: CONDRegular) -> bool:
        return bool(self.cond.shape == other.cond.shape)

    def concat(self, others: list[CONDRegular]) -> Any:
        return torch.cat([self.cond] + [o.cond for o in others])

    def size(self) -> list[int]:
        return list(self.cond.size())


class CONDNoiseShape(CONDRegular):
    """A latent-shaped input (c_concat): cut to the sampled area, then repeated to the batch."""

    def process_cond(self, batch_size: int, area: Any = None, **kwargs: Any) -> CONDRegular:
        data = self.cond
        if area is not None:
            dims = len(area) // 2
            for i in range(dims):
                data = data.narrow(i + 2, area[i + dims], area[i])
        return self._copy_with(_repeat_to(data, batch_size))


class CONDCrossAttn(CONDRegular):
    """Cross-attention context: token lengths may differ (repeated up to their least common multiple)."""

    def can_concat(self, other: CONDRegular) -> bool:
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 == s2:
            return True
        if s1[0] != s2[0] or s1[2] != s2[2]:
            return False
        lcm = math.lcm(s1[1], s2[1])
        return lcm // min(s1[1], s2[1]) <= 4

    def concat(self, others: list[CONDRegular]) -> torch.Tensor:
        conds = [self.cond] + [o.cond for o in others]
        length = math.lcm(*(c.shape[1] for c in conds))
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


class CONDConstant(CONDRegular):
    """A value shared by the whole batch (not a tensor): equal values concatenate to themselves."""

    def process_cond(self, batch_size: int, **kwargs: Any) -> CONDRegular:
        return self._copy_with(self.cond)

    def can_concat(self, other: CONDRegular) -> bool:
        return bool(self.cond == other.cond)

    def concat(self, others: list[CONDRegular]) -> Any:
        return self.cond

    def size(self) -> list[int]:
        return [1]


class CONDList(CONDRegular):
    """A list of tensors, each repeated to the batch."""

    def process_cond(self, batch_size: int, **kwargs: Any) -> CONDRegular:
        return self._copy_with([_repeat_to(c, batch_size) for c in self.cond])

    def can_concat(self, other: CONDRegular) -> bool:
        return len(self.cond) == len(other.cond) and all(
            a.shape == b.shape for a, b in zip(self.cond, other.cond, strict=True)
        )

    def concat(self, others: list[CONDRegular]) -> list[torch.Tensor]:
        return [torch.cat([c] + [o.cond[i] for o in others]) for i, c in enumerate(self.cond)]

    def size(self) -> list[int]:
        first = list(self.cond[0].size()) if self.cond else [0]
        return first
