"""TomePatchModel (ComfyUI's port of ToMe for SD, Bolya & Hoffman 2023): in the UNet's full-resolution
self-attentions, the queries of the `ratio` most redundant tokens are merged into similar ones before the
attention and copied back after it (keys and values stay whole, as in ComfyUI).

The partition follows ComfyUI's: one destination token per 2 x 2 cell, drawn from the global torch
generator, the others sources; each source's most similar destination (cosine) is its match, and the r
sources with the best matches are averaged into theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from engine import api

Fn = Callable[[torch.Tensor], torch.Tensor]
_STRIDE = 2


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _partition(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Token indices with the destinations (one random token per stride cell) first, and their count."""
    cells_y, cells_x = h // _STRIDE, w // _STRIDE
    pick = torch.randint(_STRIDE * _STRIDE, size=(cells_y, cells_x, 1), device=device)
    marks = torch.zeros(cells_y, cells_x, _STRIDE * _STRIDE, device=device, dtype=torch.int64)
    marks.scatter_(dim=2, index=pick, src=-torch.ones_like(pick))
    marks = marks.view(cells_y, cells_x, _STRIDE, _STRIDE).transpose(1, 2)
    marks = marks.reshape(cells_y * _STRIDE, cells_x * _STRIDE)
    if marks.shape != (h, w):
        full = torch.zeros(h, w, device=device, dtype=torch.int64)
        full[: marks.shape[0], : marks.shape[1]] = marks
        marks = full
    return marks.reshape(1, -1, 1).argsort(dim=1), cells_y * cells_x


def bipartite_merge(metric: torch.Tensor, w: int, h: int, r: int) -> tuple[Fn, Fn]:
    """(merge, unmerge) for (B, h·w, C) token tensors, removing r tokens by merging."""
    b, n, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return _identity, _identity
    order, num_dst = _partition(h, w, metric.device)
    src_pos, dst_pos = order[:, num_dst:, :], order[:, :num_dst, :]

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[-1]
        src = torch.gather(x, 1, src_pos.expand(x.shape[0], n - num_dst, c))
        return src, torch.gather(x, 1, dst_pos.expand(x.shape[0], num_dst, c))

    with torch.no_grad():
        a, d = split(metric / metric.norm(dim=-1, keepdim=True))
        best, best_dst = (a @ d.transpose(-1, -2)).max(dim=-1)
        r = min(a.shape[1], r)
        ranked = best.argsort(dim=-1, descending=True)[..., None]
        kept, merged = ranked[..., r:, :], ranked[..., :r, :]
        target = torch.gather(best_dst[..., None], -2, merged)

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = split(x)
        nb, t, c = src.shape
        unm = torch.gather(src, -2, kept.expand(nb, t - r, c))
        moved = torch.gather(src, -2, merged.expand(nb, r, c))
        dst = dst.scatter_reduce(-2, target.expand(nb, r, c), moved, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        count = kept.shape[1]
        unm, dst = x[..., :count, :], x[..., count:, :]
        c = unm.shape[-1]
        out = torch.zeros(b, n, c, device=x.device, dtype=x.dtype)
        out.scatter_(-2, dst_pos.expand(b, num_dst, c), dst)
        src_all = src_pos.expand(b, src_pos.shape[1], 1)
        out.scatter_(-2, torch.gather(src_all, 1, kept).expand(b, count, c), unm)
        copied = torch.gather(dst, -2, target.expand(b, r, c))
        out.scatter_(-2, torch.gather(src_all, 1, merged).expand(b, r, c), copied)
        return out

    return merge, unmerge


def tome_functions(x: torch.Tensor, ratio: float, original_shape: list[int]) -> tuple[Fn, Fn]:
    """Merging at the full-resolution level only (as ComfyUI: its largest downsample is 1)."""
    _, _, oh, ow = original_shape
    downsample = int(math.ceil(math.sqrt(oh * ow // x.shape[1])))
    if downsample > 1:
        return _identity, _identity
    return bipartite_merge(
        x, int(math.ceil(ow / downsample)), int(math.ceil(oh / downsample)), int(x.shape[1] * ratio)
    )


@api.node(
    "TomePatchModel",
    category="model_patches/unet",
    inputs=[api.Input("model", api.MODEL), api.Float("ratio", 0.3, min=0.0, max=1.0, step=0.01)],
    outputs=[api.MODEL],
)
def tome_patch_model(model: Any, ratio: float):
    state: dict[str, Fn] = {}

    def merge_queries(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]):
        merge, state["unmerge"] = tome_functions(q, ratio, extra["original_shape"])
        return merge(q), k, v

    def unmerge_output(out: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        return state.pop("unmerge", _identity)(out)

    m = model.clone()
    m.set_model_attn1_patch(merge_queries)
    m.set_model_attn1_output_patch(unmerge_output)
    return (m,)


NODES = [tome_patch_model]
