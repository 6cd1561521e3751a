"""Out-of-memory handling: recognise OOM errors, retry once after freeing memory, fall back to tiled VAE
passes, and otherwise fail with the figures and a hint the user can act on."""

from __future__ import annotations

import gc
import inspect
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch

if TYPE_CHECKING:
    from engine.memory.manager import ManagedModel, ModelManager

T = TypeVar("T")

GIB = 1024**3


class InsufficientMemoryError(RuntimeError):
    """Not enough memory even after freeing models / tiling. Carries the figures (bytes)."""

    def __init__(
        self,
        message: str,
        *,
        needed_bytes: int | None = None,
        free_bytes: int | None = None,
        total_bytes: int | None = None,
        device: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.total_bytes = total_bytes
        self.device = device
        self.hint = hint or (
            "try --lowvram (or --novram), a smaller batch size or resolution, or close other programs "
            "using the GPU"
        )
        figures = []
        if needed_bytes is not None:
            figures.append(f"needed {_gib(needed_bytes)}")
        if free_bytes is not None:
            figures.append(f"free {_gib(free_bytes)}")
        if total_bytes is not None:
            figures.append(f"total {_gib(total_bytes)}")
        where = f" on {device}" if device else ""
        detail = f" ({', '.join(figures)}{where})" if figures else where
        super().__init__(f"{message}{detail}. Hint: {self.hint}")


def _gib(n: int) -> str:
    """Human-readable byte count (GiB for model-sized figures, smaller units for small ones)."""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


def is_oom_error(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA; torch >= 2.5 has the device-generic alias) or a RuntimeError whose
    message says so (MPS, older torch, some cuDNN/cuBLAS paths)."""
    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    )
    if oom_types and isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def memory_figures(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of `device`, for error messages."""
    from engine.memory.devices import device_memory

    try:
        return device_memory(device)
    except Exception:  # figures are a courtesy: never mask the real error because of them
        return 0, 0


def run_with_oom_retry(
    fn: Callable[[], T],
    *,
    on_oom: Callable[[], object] | None = None,
    manager: ModelManager | None = None,
    keep: Iterable[ManagedModel] = (),
    device: torch.device | None = None,
    what: str = "the operation",
    needed_bytes: int | None = None,
) -> T:
    """Run `fn`; on an OOM error free memory, clear caches and run it once more. A second OOM becomes an
    InsufficientMemoryError with the device's figures.

    Freeing: `on_oom` if given, else with a `manager` every model except `keep` (and pinned ones) is
    offloaded — e.g. sampling keeps the UNet and lets text encoders, VAE and other checkpoints go."""
    if on_oom is None and manager is not None:
        kept = tuple(keep)
        on_oom = lambda: manager.free_memory(sys.maxsize, keep=kept)  # noqa: E731
        device = device or manager.compute_device
    try:
        return fn()
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        # keep the error but not its traceback: its frames hold the tensors that filled the memory
        first = exc.with_traceback(None)
    _release(device, on_oom)
    try:
        return fn()
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        dev = device or torch.device("cpu")
        free, total = memory_figures(dev)
        raise InsufficientMemoryError(
            f"out of memory during {what}, also after freeing other models",
            needed_bytes=needed_bytes,
            free_bytes=free,
            total_bytes=total,
            device=str(dev),
        ) from first


def _release(device: torch.device | None, on_oom: Callable[[], object] | None) -> None:
    if on_oom is not None:
        on_oom()
    gc.collect()
    if device is not None:
        from engine.memory.devices import empty_cache

        empty_cache(device)


# ComfyUI's VAEDecodeTiled defaults, in image pixels.
DEFAULT_TILE_SIZE = 512
DEFAULT_TILE_OVERLAP = 64


def _call_tiled(vae: Any, method: str, x: torch.Tensor, tile_size: int, overlap: int) -> torch.Tensor:
    separate = getattr(vae, f"{method}_tiled", None)
    fn = separate if callable(separate) else getattr(vae, method)
    try:
        params = dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = {}
    kwargs: dict[str, Any] = {}
    if not callable(separate):
        if "tiled" in params:
            kwargs["tiled"] = True
        elif "tile_size" not in params:
            raise TypeError(
                f"{type(vae).__name__}.{method} has no tiled mode (no `tile_size=`/`tiled=` keyword, "
                f"no {method}_tiled method), so it cannot fall back to tiling on out-of-memory"
            )
    if "tile_size" in params:
        kwargs["tile_size"] = tile_size
    for name in ("tile_overlap", "overlap"):
        if name in params:
            kwargs[name] = overlap
            break
    return fn(x, **kwargs)


def vae_with_fallback(
    vae: Any,
    method: Literal["encode", "decode"],
    x: torch.Tensor,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_TILE_OVERLAP,
    on_oom: Callable[[], object] | None = None,
    device: torch.device | None = None,
    tiled_first: bool = False,
) -> torch.Tensor:
    """`vae.decode(x)` / `vae.encode(x)`; on OOM, free (`on_oom`) and run it tiled; on OOM again,
    InsufficientMemoryError. `tile_size`/`overlap` are in image pixels (ComfyUI's VAEDecodeTiled
    convention, 512/64). The VAE's tiled mode is a `tile_size=` keyword (overlap as `tile_overlap=`),
    a `tiled=True` keyword, or separate `decode_tiled`/`encode_tiled` methods."""
    if not tiled_first:
        try:
            return getattr(vae, method)(x)
        except Exception as exc:
            if not is_oom_error(exc):
                raise
        # fall through: the exception (and the tensors its traceback holds) is released here
        _release(device, on_oom)
    try:
        return _call_tiled(vae, method, x, tile_size, overlap)
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        dev = device or x.device
        free, total = memory_figures(dev)
        raise InsufficientMemoryError(
            f"out of memory in VAE {method} of a {tuple(x.shape)} tensor, also with tiling",
            free_bytes=free,
            total_bytes=total,
            device=str(dev),
            hint="try a smaller tile size, --cpu-vae, --lowvram, or a smaller batch/resolution",
        ) from exc
