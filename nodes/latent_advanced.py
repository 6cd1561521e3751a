"""Latent arithmetic and batch plumbing (ComfyUI's latent/advanced and latent/batch families): add,
subtract, multiply, interpolate, concatenate, cut, seed behaviour, rebatching, and .latent files.

Binary operations bring samples2 to samples1's shape first (bilinear, centre-cropped to the aspect ratio,
batch tiled), as ComfyUI does. Outputs never alias an input's dict: cached values are shared.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F

from engine import api
from engine.api import images as imageio

from ._image_ops import common_upscale, gaussian_kernel, repeat_to_batch

Latent = dict[str, Any]
ADVANCED = "latent/advanced"

# A .latent file (ComfyUI's) is safetensors with the samples under "latent_tensor". With the empty tensor
# "latent_format_version_0" they are raw VAE latents, the LATENT space of ComfyUI and diffgraph, stored
# as they are; older files, without it, hold raw latents times the SD1 scale factor 0.18215 and are
# divided by it on load, as ComfyUI does.
LATENT_KEY = "latent_tensor"
VERSION_KEY = "latent_format_version_0"
OLD_FORMAT_SCALE = 0.18215


def _copy(latent: Latent, samples: torch.Tensor) -> Latent:
    out = dict(latent)
    out["samples"] = samples
    return out


def reshape_like(target: torch.Tensor, other: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """`other` resized (bilinear, centre crop) to target's channel/spatial shape, batch tiled to target's."""
    other = other.to(target)
    if other.shape[1:] != target.shape[1:]:
        other = common_upscale(other, target.shape[-1], target.shape[-2], "bilinear", "center")
    return repeat_to_batch(other, target.shape[0]) if repeat_batch else other


def _two_latents() -> list[api.Input]:
    return [api.Input("samples1", api.LATENT), api.Input("samples2", api.LATENT)]


@api.node("LatentAdd", category=ADVANCED, inputs=_two_latents(), outputs=[api.LATENT])
def latent_add(samples1: Latent, samples2: Latent):
    s1 = samples1["samples"]
    return (_copy(samples1, s1 + reshape_like(s1, samples2["samples"])),)


@api.node("LatentSubtract", category=ADVANCED, inputs=_two_latents(), outputs=[api.LATENT])
def latent_subtract(samples1: Latent, samples2: Latent):
    s1 = samples1["samples"]
    return (_copy(samples1, s1 - reshape_like(s1, samples2["samples"])),)


@api.node(
    "LatentMultiply",
    category=ADVANCED,
    inputs=[api.Input("samples", api.LATENT), api.Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01)],
    outputs=[api.LATENT],
)
def latent_multiply(samples: Latent, multiplier: float):
    return (_copy(samples, samples["samples"] * multiplier),)


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel direction and length of the channel vector; a zero vector has direction 0 (not NaN)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.nan_to_num(x / norm), norm


@api.node(
    "LatentInterpolate",
    category=ADVANCED,
    inputs=[*_two_latents(), api.Float("ratio", 1.0, min=0.0, max=1.0, step=0.01)],
    outputs=[api.LATENT],
)
def latent_interpolate(samples1: Latent, samples2: Latent, ratio: float):
    """Interpolate each pixel's channel vector in direction and length separately: the direction of
    ratio·u1 + (1-ratio)·u2 (u the unit vectors), scaled to ratio·|s1| + (1-ratio)·|s2|."""
    s1 = samples1["samples"]
    u1, m1 = _unit(s1)
    u2, m2 = _unit(reshape_like(s1, samples2["samples"]))
    direction, _ = _unit(u1 * ratio + u2 * (1.0 - ratio))
    return (_copy(samples1, direction * (m1 * ratio + m2 * (1.0 - ratio))),)


CONCAT_DIMS = ["x", "-x", "y", "-y", "t", "-t"]
_AXIS = {"x": -1, "y": -2, "t": -3}


@api.node(
    "LatentConcat",
    category=ADVANCED,
    inputs=[*_two_latents(), api.Combo("dim", CONCAT_DIMS)],
    outputs=[api.LATENT],
)
def latent_concat(samples1: Latent, samples2: Latent, dim: str):
    """samples2 joined after samples1 along width (x), height (y) or time (t); "-x" puts it before."""
    s1 = samples1["samples"]
    s2 = repeat_to_batch(samples2["samples"].to(s1), s1.shape[0])
    parts = (s2, s1) if dim.startswith("-") else (s1, s2)
    return (_copy(samples1, torch.cat(parts, dim=_AXIS[dim.lstrip("-")])),)


@api.node(
    "LatentCut",
    category=ADVANCED,
    inputs=[
        api.Input("samples", api.LATENT),
        api.Combo("dim", ["x", "y", "t"]),
        api.Int("index", 0, min=-api.MAX_RESOLUTION, max=api.MAX_RESOLUTION, step=1),
        api.Int("amount", 1, min=1, max=api.MAX_RESOLUTION, step=1),
    ],
    outputs=[api.LATENT],
)
def latent_cut(samples: Latent, dim: str, index: int, amount: int):
    """`amount` latent pixels (or frames) from `index` along one axis; a negative index counts from the
    end; both are clamped to the latent's size."""
    s = samples["samples"]
    axis = s.ndim + _AXIS[dim]
    size = s.shape[axis]
    if index >= 0:
        index = min(index, size - 1)
        amount = min(size - index, amount)
    else:
        index = max(index, -size)
        amount = min(-index, amount)
    return (_copy(samples, torch.narrow(s, axis, index % size, amount)),)


@api.node(
    "LatentBatchSeedBehavior",
    category=ADVANCED,
    inputs=[
        api.Input("samples", api.LATENT),
        api.Combo("seed_behavior", ["random", "fixed"], default="fixed"),
    ],
    outputs=[api.LATENT],
)
def latent_batch_seed_behavior(samples: Latent, seed_behavior: str):
    """ "fixed": every entry gets the first entry's noise (one batch index for all); "random": the batch
    index is dropped, so each entry gets its own noise draw."""
    out = dict(samples)
    if seed_behavior == "random":
        out.pop("batch_index", None)
    elif seed_behavior == "fixed":
        first = samples.get("batch_index", [0])[0]
        out["batch_index"] = [first] * samples["samples"].shape[0]
    return (out,)


def _latent_parts(latent: Latent, offset: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Samples, a (B, 1, 8h, 8w) noise mask (ones if none) and batch indices of one list entry."""
    samples = latent["samples"]
    b, h, w = samples.shape[0], samples.shape[-2] * 8, samples.shape[-1] * 8
    mask = latent.get("noise_mask")
    if mask is None:
        mask = torch.ones((b, 1, h, w))
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if mask.shape[-2:] != (h, w):
        mask = F.interpolate(mask, size=(h, w), mode="bilinear")
    mask = repeat_to_batch(mask, b) if mask.shape[0] < b else mask
    indices = list(latent.get("batch_index", range(offset, offset + b)))
    return samples, mask, indices


def _chunks(samples: torch.Tensor, mask: torch.Tensor, indices: list[int], size: int) -> list[Latent]:
    out = []
    for start in range(0, samples.shape[0], size):
        entry = {
            "samples": samples[start : start + size],
            "noise_mask": mask[start : start + size],
            "batch_index": indices[start : start + size],
        }
        if entry["noise_mask"].mean() == 1.0:  # an all-ones mask is no mask
            del entry["noise_mask"]
        out.append(entry)
    return out


@api.node(
    "RebatchLatents",
    category="latent/batch",
    display_name="Rebatch Latents",
    inputs=[api.Input("latents", api.LATENT), api.Int("batch_size", 1, min=1, max=4096, step=None)],
    outputs=[api.Output(api.LATENT, is_list=True)],
    input_is_list=True,
)
def rebatch_latents(latents: list[Latent], batch_size: list[int]):
    """Re-cut a list of latent batches into batches of `batch_size`: consecutive entries of the same
    size are joined (with their noise masks and batch indices) and split in order; a size change ends a
    batch early."""
    size = batch_size[0]
    out: list[Latent] = []
    run: list[tuple[torch.Tensor, torch.Tensor, list[int]]] = []
    processed = 0

    def flush() -> None:
        if run:
            samples = torch.cat([r[0] for r in run])
            out.extend(_chunks(samples, torch.cat([r[1] for r in run]), sum((r[2] for r in run), []), size))
            run.clear()

    for latent in latents:
        parts = _latent_parts(latent, processed)
        processed += len(parts[2])
        if run and run[-1][0].shape[-2:] != parts[0].shape[-2:]:
            flush()
        run.append(parts)
    flush()
    return (out,)


@api.node(
    "RebatchImages",
    category="image/batch",
    display_name="Rebatch Images",
    inputs=[api.Input("images", api.IMAGE), api.Int("batch_size", 1, min=1, max=4096, step=None)],
    outputs=[api.Output(api.IMAGE, is_list=True)],
    input_is_list=True,
)
def rebatch_images(images: list[torch.Tensor], batch_size: list[int]):
    """All images of the list, in order, re-cut into batches of `batch_size` (the last may be smaller)."""
    frames = torch.cat(list(images), dim=0)
    size = batch_size[0]
    return ([frames[i : i + size] for i in range(0, frames.shape[0], size)],)


@api.node(
    "SaveLatent",
    category="_for_testing",
    display_name="SaveLatent",
    inputs=[api.Input("samples", api.LATENT), api.String("filename_prefix", "latents/ComfyUI")],
    output_node=True,
    hidden={"prompt": api.HIDDEN_PROMPT, "extra_pnginfo": api.HIDDEN_EXTRA_PNGINFO},
)
def save_latent(
    samples: Latent,
    filename_prefix: str,
    context: api.ExecutionContext,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Write output/<prefix>_<counter>_.latent (ComfyUI's format) with the workflow in its metadata."""
    from safetensors.torch import save_file

    target = imageio.save_image_path(filename_prefix, context.folders.output)
    name = f"{target.filename}_{target.counter:05}_.latent"
    metadata = {"prompt": json.dumps(prompt) if prompt is not None else ""}
    if isinstance(extra_pnginfo, dict):
        metadata.update({key: json.dumps(value) for key, value in extra_pnginfo.items()})
    tensors = {LATENT_KEY: samples["samples"].contiguous(), VERSION_KEY: torch.tensor([])}
    save_file(tensors, str(target.folder / name), metadata=metadata)
    return api.NodeOutput(
        ui={"latents": [{"filename": name, "subfolder": target.subfolder, "type": "output"}]}
    )


def _latent_file(context: api.ExecutionContext, latent: str) -> Any:
    return context.folders.annotated_path(latent, "input")


def _latent_fingerprint(latent: str, context: api.ExecutionContext | None = None) -> Any:
    if context is None:
        return api.ALWAYS_CHANGED
    return imageio.file_digest(_latent_file(context, latent))


@api.node(
    "LoadLatent",
    category="_for_testing",
    display_name="LoadLatent",
    inputs=[api.Combo("latent", api.FileChoices("input", (".latent",)))],
    outputs=[api.LATENT],
    fingerprint=_latent_fingerprint,
)
def load_latent(latent: str, context: api.ExecutionContext):
    """A .latent file of the input folder (ComfyUI's format, current or older)."""
    from safetensors.torch import load_file

    tensors = load_file(str(_latent_file(context, latent)), device="cpu")
    multiplier = 1.0 if VERSION_KEY in tensors else 1.0 / OLD_FORMAT_SCALE
    return ({"samples": tensors[LATENT_KEY].float() * multiplier},)


# -- latent operations: functions latent -> latent, applied directly or inside guidance ---------------

OPERATIONS = "latent/advanced/operations"


@api.node(
    "LatentApplyOperation",
    category=OPERATIONS,
    inputs=[api.Input("samples", api.LATENT), api.Input("operation", api.LATENT_OPERATION)],
    outputs=[api.LATENT],
    experimental=True,
)
def latent_apply_operation(samples: Latent, operation: Any):
    return (_copy(samples, operation(latent=samples["samples"])),)


@api.node(
    "LatentApplyOperationCFG",
    category=OPERATIONS,
    inputs=[api.Input("model", api.MODEL), api.Input("operation", api.LATENT_OPERATION)],
    outputs=[api.MODEL],
    experimental=True,
)
def latent_apply_operation_cfg(model: Any, operation: Any):
    """A MODEL whose guidance applies the operation to the guidance direction (cond - uncond) of each
    step's predictions before CFG combines them (to the conditional prediction alone when there is no
    unconditional one)."""

    def pre_cfg(args: dict[str, Any]) -> list[torch.Tensor]:
        out = list(args["conds_out"])
        if len(out) == 2:
            out[0] = operation(latent=out[0] - out[1]) + out[1]
        else:
            out[0] = operation(latent=out[0])
        return out

    patched = model.clone()
    patched.set_model_sampler_pre_cfg_function(pre_cfg)
    return (patched,)


def tonemap_reinhard(latent: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Reinhard tone mapping of each pixel's channel-vector length L: with the white point
    top = (mean(L) + 5·std(L))·multiplier per latent, L' = top·(L/top) / (1 + L/top); directions kept."""
    length = torch.linalg.vector_norm(latent, dim=1, keepdim=True) + 1e-10
    mean = length.mean(dim=(1, 2, 3), keepdim=True)
    std = length.std(dim=(1, 2, 3), keepdim=True)
    top = (std * 5 + mean) * multiplier
    scaled = length / top
    return latent / length * (scaled / (scaled + 1.0) * top)


@api.node(
    "LatentOperationTonemapReinhard",
    category=OPERATIONS,
    inputs=[api.Float("multiplier", 1.0, min=0.0, max=100.0, step=0.01)],
    outputs=[api.LATENT_OPERATION],
    experimental=True,
)
def latent_operation_tonemap_reinhard(multiplier: float):
    def operation(latent: torch.Tensor, **_: Any) -> torch.Tensor:
        return tonemap_reinhard(latent, multiplier)

    return (operation,)


def sharpen(latent: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp-mask the per-pixel channel directions (lengths kept): the kernel is -10·alpha times a
    (2r+1)² Gaussian (sigma in units of the radius), plus a centre weight that makes it sum to 1;
    borders are reflected."""
    length = torch.linalg.vector_norm(latent, dim=1, keepdim=True) + 1e-6
    direction = latent / length
    size = radius * 2 + 1
    kernel = gaussian_kernel(size, sigma, device=latent.device) * (alpha * -10)
    kernel[radius, radius] += 1.0 - kernel.sum()
    channels = latent.shape[1]
    padded = F.pad(direction, (radius, radius, radius, radius), mode="reflect")
    weight = kernel.to(latent.dtype).expand(channels, 1, size, size)
    return length * F.conv2d(padded, weight, groups=channels)


@api.node(
    "LatentOperationSharpen",
    category=OPERATIONS,
    inputs=[
        api.Int("sharpen_radius", 9, min=1, max=31, step=1),
        api.Float("sigma", 1.0, min=0.1, max=10.0, step=0.1),
        api.Float("alpha", 0.1, min=0.0, max=5.0, step=0.01),
    ],
    outputs=[api.LATENT_OPERATION],
    experimental=True,
)
def latent_operation_sharpen(sharpen_radius: int, sigma: float, alpha: float):
    def operation(latent: torch.Tensor, **_: Any) -> torch.Tensor:
        return sharpen(latent, sharpen_radius, sigma, alpha)

    return (operation,)


NODES = [
    latent_add,
    latent_subtract,
    latent_multiply,
    latent_interpolate,
    latent_concat,
    latent_cut,
    latent_batch_seed_behavior,
    rebatch_latents,
    rebatch_images,
    save_latent,
    load_latent,
    latent_apply_operation,
    latent_apply_operation_cfg,
    latent_operation_tonemap_reinhard,
    latent_operation_sharpen,
]
