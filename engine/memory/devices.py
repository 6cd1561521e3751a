"""Compute-device selection, the memory options users know from ComfyUI, and memory readings.

Nothing here probes hardware at import time: `select_device(options)` is called once by the CLI / app factory
at start-up, and every decision it makes is recorded in a `DeviceInfo` that is passed around explicitly
(to the model manager, the dtype policy, `/system_stats`). The command-line flags themselves are defined in
engine.cli (`add_memory_arguments`), which turns them into the plain `MemoryOptions` below.

Memory figures are `(free, total)` bytes everywhere in engine.memory (`device_memory`, `read_meminfo`,
`oom.memory_figures`), the order of torch.cuda.mem_get_info.

Hardware is reached through a small `DeviceProbe` object so the decisions (flags -> device, VRAM state,
dtype support) can be tested on a machine without a GPU by handing in a probe that describes one.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

GIB = 1024**3

# Names accepted by --unet-dtype / --text-encoder-dtype / --vae-dtype (ComfyUI spells them the same way in
# its --fp8_e4m3fn-unet style flags).
DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
if hasattr(torch, "float8_e4m3fn"):  # float8 dtypes exist from torch 2.1 on
    DTYPE_NAMES["fp8_e4m3fn"] = torch.float8_e4m3fn
    DTYPE_NAMES["fp8_e5m2"] = torch.float8_e5m2


def parse_dtype(name: str) -> torch.dtype:
    """'fp16' -> torch.float16 etc.; raises ValueError listing the accepted names."""
    key = name.strip().lower()
    if key not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected one of: {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[key]


class VRAMState(enum.Enum):
    """How aggressively models are kept on the compute device (ComfyUI's VRAMState, same meanings)."""

    NO_VRAM = "novram"  # keep no weights resident: every layer is streamed in for its forward
    LOW_VRAM = "lowvram"  # load partially, keeping room for activations
    NORMAL_VRAM = "normalvram"  # load fully when it fits, evict least recently used models, else partial
    HIGH_VRAM = "highvram"  # keep models on the device; offload only when something else needs room
    SHARED = "shared"  # compute device shares memory with the host (CPU, Apple MPS): nothing to move


class VRAMMode(enum.Enum):
    """What the user asked for on the command line (AUTO: decide from the device)."""

    AUTO = "auto"
    GPU_ONLY = "gpu-only"
    HIGH = "highvram"
    NORMAL = "normalvram"
    LOW = "lowvram"
    NO = "novram"


@dataclass(frozen=True)
class MemoryOptions:
    """The memory/device options (the command line's flags, parsed by engine.cli), validated."""

    cpu: bool = False
    vram_mode: VRAMMode = VRAMMode.AUTO
    reserve_vram_gb: float | None = None
    cuda_device: int | None = None
    unet_dtype: torch.dtype | None = None
    text_encoder_dtype: torch.dtype | None = None
    vae_dtype: torch.dtype | None = None
    force_fp32: bool = False
    force_fp16: bool = False
    cpu_vae: bool = False
    ram_budget_gb: float | None = None
    compile: bool = (
        False  # torch.compile the diffusion networks and VAE decoders (engine.diffusion.compiling)
    )

    def __post_init__(self) -> None:
        if self.force_fp32 and self.force_fp16:
            raise ValueError("--force-fp32 and --force-fp16 contradict each other; pass at most one")
        if self.reserve_vram_gb is not None and self.reserve_vram_gb < 0:
            raise ValueError(f"--reserve-vram must be >= 0 GB, got {self.reserve_vram_gb}")
        if self.ram_budget_gb is not None and self.ram_budget_gb <= 0:
            raise ValueError(f"--ram-budget must be > 0 GB, got {self.ram_budget_gb}")
        if self.cpu and self.vram_mode in (VRAMMode.GPU_ONLY, VRAMMode.HIGH, VRAMMode.LOW, VRAMMode.NO):
            raise ValueError(f"--cpu cannot be combined with --{self.vram_mode.value}")


@dataclass(frozen=True)
class DeviceProperties:
    """What a probe reports about one accelerator."""

    name: str
    total_memory: int
    capability: tuple[int, int] | None = None  # CUDA compute capability


class DeviceProbe:
    """Access to the real hardware. Tests pass a subclass that describes a device that is not there."""

    def cuda_available(self) -> bool:
        return torch.cuda.is_available()

    def cuda_device_count(self) -> int:
        return torch.cuda.device_count()

    def cuda_properties(self, index: int) -> DeviceProperties:
        props = torch.cuda.get_device_properties(index)
        return DeviceProperties(props.name, int(props.total_memory), (props.major, props.minor))

    def cuda_bf16_supported(self, index: int) -> bool:
        with torch.cuda.device(index):
            return bool(torch.cuda.is_bf16_supported())

    def mps_available(self) -> bool:
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())

    def mps_total_memory(self) -> int:
        fn = getattr(torch.mps, "recommended_max_memory", None)
        return int(fn()) if fn is not None else ram_total_bytes()

    def ram_total(self) -> int:
        return ram_total_bytes()


def ram_total_bytes() -> int:
    """Physical RAM in bytes (reads /proc/meminfo; falls back to sysconf)."""
    return read_meminfo()[1]


def read_meminfo(path: str | os.PathLike[str] = "/proc/meminfo") -> tuple[int, int]:
    """(available, total) RAM in bytes -- (free, total) like every figure pair in engine.memory. Linux: /proc/meminfo (MemAvailable, or MemFree+Buffers+Cached on
    kernels before 3.14); elsewhere: sysconf page counts (available then is the free page count)."""
    try:
        fields: dict[str, int] = {}
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                # values are in kB (kibibytes) per proc(5)
                fields[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
        total = fields["MemTotal"]
        available = fields.get("MemAvailable")
        if available is None:
            available = fields.get("MemFree", 0) + fields.get("Buffers", 0) + fields.get("Cached", 0)
        return available, total
    except (OSError, KeyError, ValueError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        avail = os.sysconf("SC_AVPHYS_PAGES") * page
        return int(avail), int(total)
    except (ValueError, OSError, AttributeError):
        return 0, 0


@dataclass(frozen=True)
class DeviceInfo:
    """Every device decision taken at start-up; passed to the manager, dtype policy and stats."""

    compute_device: torch.device
    offload_device: torch.device
    name: str
    vram_state: VRAMState
    total_memory: int  # bytes of the compute device (RAM for the CPU)
    reserve_bytes: int = 0
    capability: tuple[int, int] | None = None
    supports_fp16: bool = False
    supports_bf16: bool = False
    supports_fp8_compute: bool = False
    vae_device: torch.device | None = None
    options: MemoryOptions = field(default_factory=MemoryOptions)

    @property
    def kind(self) -> str:
        return self.compute_device.type

    @property
    def is_cpu(self) -> bool:
        return self.compute_device.type == "cpu"

    @property
    def ram_budget_bytes(self) -> int | None:
        gb = self.options.ram_budget_gb
        return None if gb is None else int(gb * GIB)

    @classmethod
    def cpu(cls, options: MemoryOptions | None = None, *, total_memory: int | None = None) -> DeviceInfo:
        """The CPU as compute device (also what tests use as the physical side of the accounting device)."""
        cpu = torch.device("cpu")
        return cls(
            compute_device=cpu,
            offload_device=cpu,
            name="cpu",
            vram_state=VRAMState.SHARED,
            total_memory=total_memory if total_memory is not None else ram_total_bytes(),
            # fp16/bf16 matmuls exist on the CPU but are slow and fp16 accumulates badly: compute in fp32.
            supports_fp16=False,
            supports_bf16=False,
            vae_device=cpu,
            options=options or MemoryOptions(),
        )


# ComfyUI keeps ~400 MB (more on Windows) free for the driver and other programs by default.
DEFAULT_RESERVE_BYTES = 400 * 1024**2
# ComfyUI switches to low-VRAM mode by itself on cards with at most 4 GB.
AUTO_LOWVRAM_TOTAL_BYTES = 4 * GIB


def select_device(options: MemoryOptions | None = None, *, probe: DeviceProbe | None = None) -> DeviceInfo:
    """Decide the compute device, offload device, VRAM state and dtype support from flags and hardware.

    Order: --cpu wins; else CUDA if present (index --cuda-device); else Apple MPS; else CPU.
    """
    options = options or MemoryOptions()
    probe = probe or DeviceProbe()
    cpu = torch.device("cpu")
    reserve = (
        int(options.reserve_vram_gb * GIB) if options.reserve_vram_gb is not None else DEFAULT_RESERVE_BYTES
    )

    if not options.cpu and probe.cuda_available() and probe.cuda_device_count() > 0:
        index = options.cuda_device or 0
        count = probe.cuda_device_count()
        if not 0 <= index < count:
            raise ValueError(
                f"--cuda-device {index} does not exist: {count} CUDA device(s) found (0..{count - 1})"
            )
        props = probe.cuda_properties(index)
        device = torch.device("cuda", index)
        state = _vram_state_for(options.vram_mode, props.total_memory)
        major = props.capability[0] if props.capability else 0
        fp8_types = {getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)}
        return DeviceInfo(
            compute_device=device,
            offload_device=device if options.vram_mode is VRAMMode.GPU_ONLY else cpu,
            name=f"cuda:{index} {props.name}",
            vram_state=state,
            total_memory=props.total_memory,
            reserve_bytes=reserve,
            capability=props.capability,
            # fp16 arithmetic is usable from Pascal (6.x) on; bf16 needs Ampere (8.x) tensor cores.
            supports_fp16=major >= 6,
            supports_bf16=probe.cuda_bf16_supported(index) and major >= 8,
            # fp8 matmuls need Ada/Hopper (8.9+); elsewhere fp8 is storage only, cast at forward time.
            supports_fp8_compute=None not in fp8_types
            and props.capability is not None
            and props.capability >= (8, 9),
            vae_device=cpu if options.cpu_vae else device,
            options=options,
        )
    if not options.cpu and probe.mps_available():
        device = torch.device("mps")
        return DeviceInfo(
            compute_device=device,
            offload_device=cpu,
            name="mps",
            vram_state=VRAMState.SHARED,
            total_memory=probe.mps_total_memory(),
            reserve_bytes=reserve,
            supports_fp16=True,
            supports_bf16=False,  # bf16 on MPS needs macOS 14+ and is slow; ComfyUI prefers fp16 there
            vae_device=cpu if options.cpu_vae else device,
            options=options,
        )
    return DeviceInfo.cpu(options, total_memory=probe.ram_total())


def _vram_state_for(mode: VRAMMode, total_memory: int) -> VRAMState:
    if mode in (VRAMMode.GPU_ONLY, VRAMMode.HIGH):
        return VRAMState.HIGH_VRAM
    if mode is VRAMMode.NORMAL:
        return VRAMState.NORMAL_VRAM
    if mode is VRAMMode.LOW:
        return VRAMState.LOW_VRAM
    if mode is VRAMMode.NO:
        return VRAMState.NO_VRAM
    return VRAMState.LOW_VRAM if total_memory <= AUTO_LOWVRAM_TOTAL_BYTES else VRAMState.NORMAL_VRAM


def device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of a device as the driver sees it; for the CPU, available and total RAM."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # Memory torch has reserved in its caching allocator but not handed out is free for us too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached), int(total)
    available, total = read_meminfo()
    if device.type == "mps":
        allocated = int(getattr(torch.mps, "current_allocated_memory", lambda: 0)())
        fn = getattr(torch.mps, "recommended_max_memory", None)
        limit = int(fn()) if fn is not None else total
        return max(0, min(available, limit - allocated)), limit
    return available, total


def empty_cache(device: torch.device) -> None:
    """Return cached allocator blocks to the driver so that other programs (and our figures) see them free."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        fn = getattr(torch.mps, "empty_cache", None)
        if fn is not None:
            fn()
