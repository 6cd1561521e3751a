"""Tensor helpers of ComfyUI's `comfy.utils` that packs call on images and latents: `common_upscale`
(with "bislerp", "lanczos" and the centre crop), batch resizing and tiled processing. Same sizes, crops
and formulas as ComfyUI's, so a pack's output matches what it gives there."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _slerp_rows(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Slerp between rows of (N, C) `a` and `b` at ratios `t` (N, 1), magnitudes interpolated linearly;
    rows that are (nearly) parallel take `a`, opposite ones a linear blend (ComfyUI's edge cases)."""
    channels = a.shape[-1]
    norm_a = a.norm(dim=-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True)
    unit_a = a / norm_a
    unit_b = b / norm_b
    unit_a[norm_a.expand(-1, channels) == 0.0] = 0.0
    unit_b[norm_b.expand(-1, channels) == 0.0] = 0.0
    dot = (unit_a * unit_b).sum(1)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    ratio = t.squeeze(1)
    out = (torch.sin((1.0 - ratio) * omega) / sin_omega).unsqueeze(1) * unit_a
    out = out + (torch.sin(ratio * omega) / sin_omega).unsqueeze(1) * unit_b
    out *= (norm_a * (1.0 - t) + norm_b * t).expand(-1, channels)
    parallel = dot > 1 - 1e-5
    opposite = dot < 1e-5 - 1
    out[parallel] = a[parallel]
    out[opposite] = (a * (1.0 - t) + b * t)[opposite]
    return out


def _bilinear_sources(old: int, new: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """For each of `new` output positions: the fractional ratio and the two source indices bilinear
    resizing (align_corners=False) reads, obtained by resizing the index ramps themselves."""
    ramp = torch.arange(old, dtype=torch.float32, device=device).reshape(1, 1, 1, -1)
    low = F.interpolate(ramp, size=(1, new), mode="bilinear")
    ratios = low - low.floor()
    upper = ramp + 1
    upper[..., -1] -= 1
    high = F.interpolate(upper, size=(1, new), mode="bilinear")
    return ratios, low.to(torch.int64), high.to(torch.int64)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's "bislerp": bilinear resizing of (N, C, H, W) that slerps channel vectors, width first."""
    dtype = samples.dtype
    x = samples.float()
    n, c, h, w = x.shape
    ratios, low, high = _bilinear_sources(w, width, x.device)
    low, high = low.expand(n, c, h, -1), high.expand(n, c, h, -1)
    ratios = ratios.expand(n, 1, h, -1).movedim(1, -1).reshape(-1, 1)
    a = x.gather(-1, low).movedim(1, -1).reshape(-1, c)
    b = x.gather(-1, high).movedim(1, -1).reshape(-1, c)
    x = _slerp_rows(a, b, ratios).reshape(n, h, width, c).movedim(-1, 1)
    ratios, low, high = _bilinear_sources(h, height, x.device)
    low = low.reshape(1, 1, -1, 1).expand(n, c, -1, width)
    high = high.reshape(1, 1, -1, 1).expand(n, c, -1, width)
    ratios = ratios.reshape(1, 1, -1, 1).expand(n, 1, -1, width).movedim(1, -1).reshape(-1, 1)
    a = x.gather(-2, low).movedim(1, -1).reshape(-1, c)
    b = x.gather(-2, high).movedim(1, -1).reshape(-1, c)
    x = _slerp_rows(a, b, ratios).reshape(n, height, width, c).movedim(-1, 1)
    return x.to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos on each (C, H, W) image as 8-bit RGB, back to float 0..1 (as ComfyUI)."""
    from PIL import Image

    out = []
    for image in samples:
        array = np.clip(255.0 * image.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8)
        resized = Image.fromarray(array).resize((width, height), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(resized).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    old_w, old_h = samples.shape[-1], samples.shape[-2]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)


def common_upscale(
    samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str
) -> torch.Tensor:
    """Resize (N, C, H, W) - or (N, C, T, H, W), frame by frame - to height x width."""
    shape = tuple(samples.shape)
    if len(shape) > 4:
        samples = samples.reshape(shape[0], shape[1], -1, shape[-2], shape[-1]).movedim(2, 1)
        samples = samples.reshape(-1, shape[1], shape[-2], shape[-1])
    source = center_crop(samples, width, height) if crop == "center" else samples
    if upscale_method == "bislerp":
        out = bislerp(source, width, height)
    elif upscale_method == "lanczos":
        out = lanczos(source, width, height)
    else:
        out = F.interpolate(source, size=(height, width), mode=upscale_method)
    if len(shape) == 4:
        return out
    out = out.reshape((shape[0], -1, shape[1]) + (height, width))
    return out.movedim(2, 1).reshape(shape[:-2] + (height, width))


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    size = tensor.shape[dim]
    if size > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if size < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = math.ceil(batch_size / size)
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor


def _resampled_indices(count: int, batch_size: int) -> list[int]:
    """Which input index each of `batch_size` outputs takes: evenly spread picks (ComfyUI's rule)."""
    if batch_size < count:
        scale = (count - 1) / (batch_size - 1)
        return [min(round(i * scale), count - 1) for i in range(batch_size)]
    scale = count / batch_size
    return [min(math.floor((i + 0.5) * scale), count - 1) for i in range(batch_size)]


def resize_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    if tensor.shape[0] == batch_size:
        return tensor
    if batch_size <= 1:
        return tensor[:batch_size]
    return tensor[_resampled_indices(tensor.shape[0], batch_size)].clone()


def resize_list_to_batch_size(items: list[Any], batch_size: int) -> list[Any]:
    if len(items) in (batch_size, 0):
        return items
    if batch_size <= 1:
        return items[:batch_size]
    return [items[i] for i in _resampled_indices(len(items), batch_size)]


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


def _feather(mask: torch.Tensor, dims: int, feathers: Sequence[int]) -> None:
    """Linear ramps over `feather` samples at both ends of each spatial axis (blends tile seams)."""
    for d in range(2, dims + 2):
        feather = feathers[d - 2]
        if feather >= mask.shape[d]:
            continue
        for t in range(feather):
            weight = (t + 1) / feather
            mask.narrow(d, t, 1).mul_(weight)
            mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(weight)


@torch.inference_mode()
def tiled_scale_multidim(
    samples: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    tile: Sequence[int] = (64, 64),
    overlap: int | Sequence[int] = 8,
    upscale_amount: Any = 4,
    out_channels: int = 3,
    output_device: Any = "cpu",
    downscale: bool = False,
    index_formulas: Any = None,
    pbar: Any = None,
) -> torch.Tensor:
    """Run `function` over overlapping tiles of each sample and blend the results (ComfyUI's tiling)."""
    dims = len(tile)
    scales = list(upscale_amount) if isinstance(upscale_amount, tuple | list) else [upscale_amount] * dims
    overlaps = [int(o) for o in overlap] if isinstance(overlap, Sequence) else [int(overlap)] * dims
    formulas = scales if index_formulas is None else index_formulas
    formulas = list(formulas) if isinstance(formulas, tuple | list) else [formulas] * dims

    def apply(rule: Any, value: float) -> float:
        if callable(rule):
            return float(rule(value))
        return value / rule if downscale else rule * value

    def scaled(sizes: Sequence[int]) -> list[int]:
        return [round(apply(scales[i], sizes[i])) for i in range(len(sizes))]

    output = torch.empty([samples.shape[0], out_channels, *scaled(samples.shape[2:])], device=output_device)
    for b in range(samples.shape[0]):
        s = samples[b : b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(dims)):
            output[b : b + 1] = function(s).to(output_device)
            if pbar is not None:
                pbar.update(1)
            continue
        out = torch.zeros([1, out_channels, *scaled(s.shape[2:])], device=output_device)
        weights = torch.zeros_like(out)
        positions = [
            range(0, s.shape[d + 2] - overlaps[d], tile[d] - overlaps[d]) if s.shape[d + 2] > tile[d] else [0]
            for d in range(dims)
        ]
        for corner in itertools.product(*positions):
            piece, starts = s, []
            for d in range(dims):
                pos = max(0, min(s.shape[d + 2] - overlaps[d], corner[d]))
                piece = piece.narrow(d + 2, pos, min(tile[d], s.shape[d + 2] - pos))
                starts.append(round(apply(formulas[d], pos)))
            result = function(piece).to(output_device)
            mask = torch.ones_like(result)
            _feather(mask, dims, [round(apply(scales[d], overlaps[d])) for d in range(dims)])
            o, w = out, weights
            for d in range(dims):
                o = o.narrow(d + 2, starts[d], mask.shape[d + 2])
                w = w.narrow(d + 2, starts[d], mask.shape[d + 2])
            o.add_(result * mask)
            w.add_(mask)
            if pbar is not None:
                pbar.update(1)
        output[b : b + 1] = out / weights
    return output


def tiled_scale(
    samples: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    tile_x: int = 64,
    tile_y: int = 64,
    overlap: int = 8,
    upscale_amount: Any = 4,
    out_channels: int = 3,
    output_device: Any = "cpu",
    pbar: Any = None,
) -> torch.Tensor:
    return tiled_scale_multidim(
        samples, function, (tile_y, tile_x), overlap, upscale_amount, out_channels, output_device, pbar=pbar
    )


def reshape_mask(input_mask: torch.Tensor, output_shape: Sequence[int]) -> torch.Tensor:
    """A mask resized to (N, C, *spatial) of `output_shape`: interpolated, channels repeated, batch
    repeated."""
    dims = len(output_shape) - 2
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]
    if dims == 2:
        input_mask = input_mask.reshape((-1, 1, input_mask.shape[-2], input_mask.shape[-1]))
    elif dims == 3 and input_mask.ndim < 5:
        input_mask = input_mask.reshape((1, 1, -1, input_mask.shape[-2], input_mask.shape[-1]))
    mask = F.interpolate(input_mask, size=tuple(output_shape[2:]), mode=mode)
    if mask.shape[1] < output_shape[1]:
        mask = mask.repeat((1, output_shape[1]) + (1,) * dims)[:, : output_shape[1]]
    return repeat_to_batch_size(mask, output_shape[0])
