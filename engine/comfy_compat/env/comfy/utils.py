"""ComfyUI's `comfy.utils`: file loading (weights only, never arbitrary pickles), attribute paths,
batch and image resizing (engine.comfy_compat.image_ops) and `ProgressBar`, which reports to the
running node's progress (and so to the CLI bar or the WebSocket `progress` messages with previews)."""

from __future__ import annotations

import logging
import struct
from typing import Any

import torch

from engine.comfy_compat import image_ops as _ops
from engine.comfy_compat import progress as _progress
from engine.execution.context import running_context as _running_context
from engine.types import MAX_RESOLUTION as _MAX_RESOLUTION

log = logging.getLogger("diffgraph.comfy_compat")

MAX_RESOLUTION = _MAX_RESOLUTION  # ComfyUI keeps it in `nodes`; some packs look for it here
ALWAYS_SAFE_LOAD = True  # diffgraph reads .ckpt/.pt with torch.load(weights_only=True), always
MMAP_TORCH_FILES = False
DISABLE_MMAP = False

bislerp = _ops.bislerp
lanczos = _ops.lanczos
common_upscale = _ops.common_upscale
repeat_to_batch_size = _ops.repeat_to_batch_size
resize_to_batch_size = _ops.resize_to_batch_size
resize_list_to_batch_size = _ops.resize_list_to_batch_size
get_tiled_scale_steps = _ops.get_tiled_scale_steps
tiled_scale_multidim = _ops.tiled_scale_multidim
tiled_scale = _ops.tiled_scale
reshape_mask = _ops.reshape_mask


# -- files ---------------------------------------------------------------------------------------


def load_torch_file(
    ckpt: str, safe_load: bool = False, device: Any = None, return_metadata: bool = False
) -> Any:
    """A state dict from .safetensors/.sft (with its metadata when asked) or, for other files, through
    torch.load(weights_only=True) whatever `safe_load` says (no arbitrary code from a model file);
    a checkpoint wrapping its weights in "state_dict" (or one single entry) is unwrapped."""
    device = torch.device("cpu") if device is None else torch.device(device)
    metadata = None
    if str(ckpt).lower().endswith((".safetensors", ".sft")):
        import safetensors

        with safetensors.safe_open(str(ckpt), framework="pt", device=device.type) as handle:
            sd = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
            if return_metadata:
                metadata = handle.metadata()
    else:
        loaded = torch.load(ckpt, map_location=device, weights_only=True)
        if "state_dict" in loaded:
            sd = loaded["state_dict"]
        elif len(loaded) == 1 and isinstance(next(iter(loaded.values())), dict):
            sd = next(iter(loaded.values()))
        else:
            sd = loaded
    return (sd, metadata) if return_metadata else sd


def save_torch_file(sd: dict[str, torch.Tensor], ckpt: str, metadata: dict[str, str] | None = None) -> None:
    import safetensors.torch

    safetensors.torch.save_file(sd, ckpt, metadata=metadata)


def safetensors_header(path: str, max_size: int = 100 * 1024 * 1024) -> bytes | None:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return None if length > max_size else handle.read(length)


def calculate_parameters(sd: dict[str, torch.Tensor], prefix: str = "") -> int:
    return sum(w.nelement() for k, w in sd.items() if k.startswith(prefix))


def weight_dtype(sd: dict[str, torch.Tensor], prefix: str = "") -> torch.dtype | None:
    """The dtype holding the most elements among the keys with `prefix`."""
    counts: dict[torch.dtype, int] = {}
    for key, w in sd.items():
        if key.startswith(prefix):
            counts[w.dtype] = counts.get(w.dtype, 0) + w.numel()
    return max(counts, key=lambda d: counts[d]) if counts else None


def state_dict_key_replace(state_dict: dict[str, Any], keys_to_replace: dict[str, str]) -> dict[str, Any]:
    for old, new in keys_to_replace.items():
        if old in state_dict:
            state_dict[new] = state_dict.pop(old)
    return state_dict


def state_dict_prefix_replace(
    state_dict: dict[str, Any], replace_prefix: dict[str, str], filter_keys: bool = False
) -> dict[str, Any]:
    """Keys starting with each prefix get the replacement prefix; with filter_keys only those are kept
    (in a new dict), otherwise `state_dict` is changed in place."""
    out: dict[str, Any] = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old) :]] = state_dict.pop(key)
    return out


def swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    """The two halves of a (shift, scale) modulation weight in (scale, shift) order (diffusers')."""
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def convert_sd_to(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    for key in list(state_dict):
        state_dict[key] = state_dict[key].to(dtype)
    return state_dict


# -- attribute paths ("a.b.weight") ----------------------------------------------------------------


def get_attr(obj: Any, attr: str) -> Any:
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj: Any, attr: str, value: Any) -> Any:
    """Set a dotted attribute; returns the previous value."""
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    previous = getattr(obj, last)
    setattr(obj, last, value)
    return previous


def set_attr_param(obj: Any, attr: str, value: torch.Tensor) -> Any:
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def copy_to_param(obj: Any, attr: str, value: torch.Tensor) -> None:
    """Copy into the existing tensor in place (its identity, device and dtype stay). Through the tensor
    itself under no_grad rather than ``.data``: that bumps its version counter, which the engine's packed
    CPU convolution weights (engine.kernels.cpu_conv) watch to notice a changed weight."""
    with torch.no_grad():
        get_attr(obj, attr).copy_(value)


# -- progress ---------------------------------------------------------------------------------------

PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK: Any = None


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(function: Any) -> None:
    """A pack's replacement for progress reporting: called (value, total, preview, node_id=...) by the
    bars created afterwards, instead of reporting to the running node."""
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    """Progress of the running node: `update(n)` advances, `update_absolute(v, total, preview)` sets it;
    a preview is ComfyUI's ("JPEG", PIL image, max size) tuple. An interrupted prompt raises here."""

    def __init__(self, total: float, node_id: Any = None) -> None:
        self.total = total
        self.current: float = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id
        # The node that made the bar: packs update bars from their own worker threads too, where no
        # node is "running" (the running node is per thread).
        self._context = _running_context()

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)
        else:
            _progress.report_progress(self.current, self.total, preview, self._context)

    def update(self, value: float) -> None:
        self.update_absolute(self.current + value)
