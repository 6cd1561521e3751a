"""Reading weight files: ``.safetensors`` and (weights-only) PyTorch pickles.

Memory model
------------
Checkpoints are large (2-7 GB) and the loader must not hold two full copies of them. The
safetensors format (https://github.com/huggingface/safetensors, "Format" section) is an 8-byte
little-endian header length, a JSON header mapping each tensor name to ``dtype``, ``shape`` and
``data_offsets`` (relative to the end of the header), then the raw little-endian tensor bytes.

We parse and validate the header ourselves (so that truncated or foreign files get a precise
message) and then, by default, stream each tensor with ``readinto`` straight into a freshly
allocated tensor of the *target* dtype:

* same dtype: the bytes land directly in the destination tensor (one copy, no scratch);
* different dtype: the bytes land in a scratch tensor the size of that one tensor, which is
  then cast into the destination, so the peak is "loaded weights + the largest tensor".

Why not hand out ``safe_open`` tensors? With safetensors >= 0.5 ``get_tensor`` returns views of a
private memory map; those pages count towards the process RSS once touched, so casting them to
another dtype keeps the mapped source *and* the cast copy resident (1.5x for fp16 -> fp32).
Plain reads go through the page cache, which the kernel can drop, and never count against RSS.
``mmap=True`` is still offered for callers that want lazy, zero-copy tensors (e.g. streaming
layers to an accelerator): then tensors whose dtype already matches are taken from ``safe_open``
without reading anything up front.

``.ckpt``/``.pt``/``.pth``/``.bin`` files are pickles; they are only ever opened with
``torch.load(weights_only=True)``, which refuses any object other than tensors and plain
containers, so no code from the file is executed.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# safetensors dtype codes -> torch dtypes (format spec, "dtype" field).
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _code, _name in (
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
):
    if hasattr(torch, _name):
        _ST_DTYPES[_code] = getattr(torch, _name)

# The reference implementation refuses headers above 100 MB; a real header is a few hundred KB.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

# Scratch reads are chunked so that a cast never needs a second buffer the size of a huge tensor
# in one go beyond the tensor itself.
_READ_CHUNK = 64 * 1024 * 1024


class CheckpointError(ValueError):
    """A weight file could not be used. ``str()`` names the file, what is wrong and how to fix it."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(f"{Path(self.path).name}: {message} (file: {self.path})")


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(path, "file not found; check the name and that it is in the models folder")
    if path.is_dir():
        raise CheckpointError(
            path,
            "this is a folder, not a weight file; diffusers model folders are loaded with "
            "load_diffusers_folder()",
        )


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate the header of a ``.safetensors`` file without reading any tensor data."""
    p = Path(path)
    _check_exists(p)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                p,
                f"file is only {size} bytes, too short to be a safetensors file (empty or truncated download?)",
            )
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > _MAX_HEADER_BYTES:
            raise CheckpointError(
                p,
                f"not a safetensors file: the first 8 bytes {head!r} announce a {n}-byte header but the file "
                f"has {size} bytes. The file is corrupt, truncated, or of another format renamed to .safetensors",
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            p, f"not a safetensors file: its {n}-byte header is not valid JSON ({e}); the file is corrupt"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(p, "not a safetensors file: the header is not a JSON object")

    data_start = 8 + n
    data_len = size - data_start
    metadata_raw = header.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict):
        raise CheckpointError(p, "corrupt safetensors header: __metadata__ is not an object")
    metadata = {str(k): str(v) for k, v in metadata_raw.items()}

    tensors: dict[str, TensorInfo] = {}
    furthest = 0
    furthest_key = ""
    for name, entry in header.items():
        try:
            code = entry["dtype"]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                p, f"corrupt safetensors header: entry {name!r} is malformed: {entry!r}"
            ) from None
        dtype = _ST_DTYPES.get(code)
        if dtype is None:
            raise CheckpointError(
                p, f"tensor {name!r} has dtype {code!r}, which this loader does not support"
            )
        numel = 1
        for s in shape:
            numel *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != numel * itemsize or begin < 0 or any(s < 0 for s in shape):
            raise CheckpointError(
                p,
                f"corrupt safetensors header: tensor {name!r} of shape {list(shape)} {code} needs "
                f"{numel * itemsize} bytes but its offsets span {begin}..{end}",
            )
        if end > furthest:
            furthest, furthest_key = end, name
        tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
    if furthest > data_len:
        raise CheckpointError(
            p,
            f"file is truncated: it has {size} bytes but tensor {furthest_key!r} ends at byte "
            f"{data_start + furthest} ({data_start + furthest - size} bytes missing). Re-download or re-copy it",
        )
    return SafetensorsHeader(str(p), tensors, metadata)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` string map of a ``.safetensors`` file (empty for other formats)."""
    p = Path(path)
    if p.suffix.lower() not in SAFETENSORS_SUFFIXES:
        _check_exists(p)
        return {}
    return read_safetensors_header(p).metadata


# The dtype floating-point tensors are read into: one for all, or one per tensor name (a checkpoint's
# UNet, VAE and text encoder each in the dtype of their role), None = keep the file's.
DtypeSpec = torch.dtype | Callable[[str], torch.dtype | None] | None


def _target_dtype(src: torch.dtype, dtype: DtypeSpec, name: str) -> torch.dtype:
    # Only floating-point weights follow the requested dtype; integer buffers (position ids) keep theirs.
    if callable(dtype):
        dtype = dtype(name)
    if dtype is None or not src.is_floating_point:
        return src
    return dtype


def _read_into(f: Any, t: torch.Tensor) -> None:
    """Fill a contiguous CPU tensor with the next ``t.nbytes`` bytes of ``f``."""
    if t.numel() == 0:
        return
    view = memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    pos = 0
    total = len(view)
    while pos < total:
        got = f.readinto(view[pos : min(total, pos + _READ_CHUNK)])
        if not got:
            raise EOFError
        pos += got


def _iter_safetensors(
    header: SafetensorsHeader,
    names: list[str],
    dtype: DtypeSpec,
    device: str | torch.device,
) -> Iterator[tuple[str, torch.Tensor]]:
    # Read in file order so the disk sees one sequential pass.
    infos = sorted((header.tensors[n] for n in names), key=lambda i: i.start)
    # One scratch buffer, sized for the largest tensor that needs a cast, is reused for every cast:
    # allocating a temporary per tensor lets the C allocator fragment the heap, which showed up as
    # ~1.5x peak RSS instead of ~1.0x when loading fp16 files into fp32.
    cast_sizes = [i.nbytes for i in infos if _target_dtype(i.dtype, dtype, i.name) != i.dtype]
    scratch = torch.empty(max(cast_sizes, default=0), dtype=torch.uint8)
    with open(header.path, "rb", buffering=0) as f:
        for info in infos:
            f.seek(info.start)
            target = _target_dtype(info.dtype, dtype, info.name)
            if target == info.dtype:
                src = torch.empty(info.shape, dtype=info.dtype)
            else:
                src = scratch[: info.nbytes].view(info.dtype).view(info.shape)
            try:
                _read_into(f, src)
            except EOFError:
                raise CheckpointError(
                    header.path, f"file ended while reading tensor {info.name!r}; it is truncated"
                ) from None
            if sys.byteorder == "big":  # pragma: no cover - the format is little-endian
                src = _byteswap(src)
            out = src if target == info.dtype else src.to(target)
            if torch.device(device).type != "cpu":
                out = out.to(device)
            yield info.name, out


def _byteswap(t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - little-endian hosts only
    if t.element_size() == 1:
        return t
    b = t.reshape(-1).view(torch.uint8).view(-1, t.element_size()).flip(1).contiguous()
    return b.view(t.dtype).reshape(t.shape)


def _read_safetensors(
    p: Path,
    dtype: DtypeSpec,
    device: str | torch.device,
    keys_filter: Callable[[str], bool] | None,
    mmap: bool,
) -> dict[str, torch.Tensor]:
    header = read_safetensors_header(p)
    names = [n for n in header.tensors if keys_filter is None or keys_filter(n)]
    out: dict[str, torch.Tensor] = {}
    if mmap and torch.device(device).type == "cpu":
        from safetensors import SafetensorError, safe_open

        lazy = [
            n for n in names if _target_dtype(header.tensors[n].dtype, dtype, n) == header.tensors[n].dtype
        ]
        try:
            with safe_open(str(p), framework="pt", device="cpu") as sf:
                for n in lazy:
                    out[n] = sf.get_tensor(n)
        except SafetensorError as e:
            raise CheckpointError(p, f"safetensors could not map the file: {e}") from None
        names = [n for n in names if n not in out]
    for name, t in _iter_safetensors(header, names, dtype, device):
        out[name] = t
    # Keep the header's key order (stable for tests and error messages).
    return {n: out[n] for n in header.tensors if n in out}


def _describe_pickle_refusal(err: Exception) -> str:
    text = str(err)
    hint = ""
    for line in text.splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line or "GLOBAL" in line:
            hint = line.strip()
            break
    return (
        "refused to load: this pickle contains Python objects other than tensors"
        + (f" ({hint})" if hint else "")
        + ". Unpickling such a file can run arbitrary code, so only weights-only pickles are accepted. "
        "Use a .safetensors version of the model, or convert this file with a tool you trust"
    )


def _read_pickle(
    p: Path,
    dtype: DtypeSpec,
    device: str | torch.device,
    keys_filter: Callable[[str], bool] | None,
) -> dict[str, torch.Tensor]:
    # The zip-based format (torch >= 1.6) can be memory-mapped; the legacy format cannot.
    use_mmap = zipfile.is_zipfile(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) or "weights_only" in str(e):
            raise CheckpointError(p, _describe_pickle_refusal(e)) from None
        raise CheckpointError(
            p, f"not a readable PyTorch file ({e}); the file is corrupt or truncated"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            p,
            f"not a readable PyTorch checkpoint ({msg}); the file is corrupt, truncated or not a checkpoint",
        ) from None

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            p, f"expected a dict of tensors (a state dict) but the file holds a {type(obj).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor) or (keys_filter is not None and not keys_filter(str(k))):
            continue  # training bookkeeping such as "global_step" or "epoch"
        target = _target_dtype(v.dtype, dtype, str(k))
        if target != v.dtype:
            v = v.to(target)
        if torch.device(device).type != "cpu":
            v = v.to(device)
        out[str(k)] = v
    return out


def read_state_dict(
    path: str | os.PathLike[str],
    *,
    dtype: DtypeSpec = None,
    device: str | torch.device = "cpu",
    keys_filter: Callable[[str], bool] | None = None,
    mmap: bool = False,
) -> dict[str, torch.Tensor]:
    """Read all (or ``keys_filter``-selected) tensors of a weight file.

    Floating-point tensors are converted to ``dtype`` (if given) as each one is read, so the peak
    memory is the size of the result plus one tensor. Integer tensors keep their dtype. ``dtype`` may
    also be a function of the tensor name (None for "keep the file's"), so each tensor is cast once,
    straight into the dtype its component asks for.
    ``mmap=True`` returns lazily mapped tensors for safetensors entries that need no cast (see the
    module docstring). Raises :class:`CheckpointError` for missing, corrupt, truncated or unsafe
    files and for files without any tensor.
    """
    p = Path(path)
    _check_exists(p)
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        sd = _read_safetensors(p, dtype, device, keys_filter, mmap)
    elif suffix in PICKLE_SUFFIXES:
        sd = _read_pickle(p, dtype, device, keys_filter)
    else:
        raise CheckpointError(
            p,
            f"unsupported file type {suffix!r}; expected one of "
            f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}",
        )
    if not sd:
        what = "matching the filter " if keys_filter is not None else ""
        raise CheckpointError(p, f"the file contains no tensors {what}(empty state dict)")
    return sd
