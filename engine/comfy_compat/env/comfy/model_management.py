"""ComfyUI's `comfy.model_management`: devices, dtypes, memory figures and model loading answered by
diffgraph's device decision and model manager (engine.comfy_compat.memory_adapter; CPU and float32 when
the runtime runs no model), and interrupts on the running prompt (engine.comfy_compat.progress)."""

from __future__ import annotations

import enum
import sys
import threading
from typing import Any

import torch

from engine.comfy_compat import memory_adapter as _mem
from engine.comfy_compat import progress as _progress
from engine.memory.casting import module_bytes as _module_bytes


class VRAMState(enum.Enum):
    """ComfyUI's values; diffgraph's engine.memory.devices.VRAMState maps onto them by name (the CPU is
    DISABLED: nothing to move)."""

    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(enum.Enum):
    GPU = 0
    CPU = 1
    MPS = 2


def _states() -> tuple[VRAMState, CPUState]:
    info = _mem.device_info()
    if info is None or info.is_cpu:
        return VRAMState.DISABLED, CPUState.CPU
    if info.kind == "mps":
        return VRAMState.SHARED, CPUState.MPS
    ours = getattr(info.vram_state, "name", "NORMAL_VRAM")
    return VRAMState.__members__.get(ours, VRAMState.NORMAL_VRAM), CPUState.GPU


vram_state, cpu_state = _states()
set_vram_to = vram_state
lowvram_available = True
directml_enabled = False
xpu_available = False
npu_available = False
mlu_available = False
torch_version = torch.__version__
XFORMERS_VERSION = ""
XFORMERS_IS_AVAILABLE = False
XFORMERS_ENABLED_VAE = False
ENABLE_PYTORCH_ATTENTION = True
DISABLE_SMART_MEMORY = False
MIN_WEIGHT_MEMORY_RATIO = 0.4
EXTRA_RESERVED_VRAM = 400 * 1024 * 1024
OOM_EXCEPTION = torch.cuda.OutOfMemoryError
InterruptProcessingException = _progress.InterruptProcessingException
interrupt_processing_mutex = threading.RLock()
interrupt_processing = False
WINDOWS = sys.platform == "win32"
FORCE_FP32 = False
PRIORITIZE_FP16 = False
SUPPORT_FP8_OPS = False
# ComfyUI's asynchronous weight-offload streams: diffgraph's manager offloads synchronously.
NUM_STREAMS = 0
STREAMS: dict[Any, Any] = {}
stream_counters: dict[Any, int] = {}
in_training = False  # newer ComfyUI's flag for training nodes; diffgraph does not train


def __getattr__(name: str) -> Any:
    # Memory totals in MB, read when asked (reading them may read /proc/meminfo: not at import).
    if name == "total_vram":
        return _mem.total_memory_bytes() / (1024 * 1024)
    if name == "total_ram":
        return _mem.total_memory_bytes(torch.device("cpu")) / (1024 * 1024)
    raise AttributeError(f"module 'comfy.model_management' has no attribute {name!r}")


# -- devices ----------------------------------------------------------------------------------------


def get_torch_device() -> torch.device:
    return _mem.compute_device()


def get_torch_device_name(device: Any) -> str:
    info = _mem.device_info()
    return info.name if info is not None and torch.device(device) == info.compute_device else str(device)


def intermediate_device() -> torch.device:
    return torch.device("cpu") if _mem.device_info() is None else _mem.offload_device()


def intermediate_dtype() -> torch.dtype:
    return torch.float32


unet_offload_device = _mem.offload_device
text_encoder_offload_device = _mem.offload_device
vae_offload_device = _mem.offload_device
vae_device = _mem.vae_device


def text_encoder_device() -> torch.device:
    return _mem.compute_device()


def unet_inital_load_device(parameters: int = 0, dtype: Any = None) -> torch.device:
    return _mem.offload_device()


def text_encoder_initial_device(load_device: Any, offload_device: Any, model_size: int = 0) -> Any:
    return offload_device


def get_autocast_device(dev: Any) -> str:
    return dev.type if hasattr(dev, "type") else "cuda"


def is_device_type(device: Any, kind: str) -> bool:
    return getattr(device, "type", None) == kind


def is_device_cpu(device: Any) -> bool:
    return is_device_type(device, "cpu")


def is_device_mps(device: Any) -> bool:
    return is_device_type(device, "mps")


def is_device_cuda(device: Any) -> bool:
    return is_device_type(device, "cuda")


def is_device_xpu(device: Any) -> bool:
    return is_device_type(device, "xpu")


def cpu_mode() -> bool:
    return cpu_state is CPUState.CPU


def mps_mode() -> bool:
    return cpu_state is CPUState.MPS


def is_directml_enabled() -> bool:
    return False


def is_intel_xpu() -> bool:
    return False


def is_ascend_npu() -> bool:
    return False


def is_mlu() -> bool:
    return False


def is_ixuca() -> bool:
    return False


def mac_version() -> tuple[int, ...] | None:
    return None


def amd_min_version(device: Any = None, min_rdna_version: int = 0) -> bool:
    return False


def is_nvidia() -> bool:
    return is_device_cuda(get_torch_device()) and torch.version.cuda is not None


def is_amd() -> bool:
    return is_device_cuda(get_torch_device()) and getattr(torch.version, "hip", None) is not None


def device_supports_non_blocking(device: Any) -> bool:
    return is_device_cuda(device)


device_should_use_non_blocking = device_supports_non_blocking


def force_channels_last() -> bool:
    return False


# -- memory -----------------------------------------------------------------------------------------


def get_total_memory(dev: Any = None, torch_total_too: bool = False) -> Any:
    total = _mem.total_memory_bytes(dev)
    return (total, total) if torch_total_too else total


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    free = _mem.free_memory_bytes(dev)
    return (free, free) if torch_free_too else free


def extra_reserved_memory() -> int:
    info = _mem.device_info()
    return int(info.reserve_bytes) if info is not None else EXTRA_RESERVED_VRAM


def minimum_inference_memory() -> int:
    return 1024 * 1024 * 1024 + extra_reserved_memory()


def maximum_vram_for_weights(device: Any = None) -> int:
    return max(0, get_total_memory(device) - minimum_inference_memory())


def module_size(module: torch.nn.Module) -> int:
    return int(_module_bytes(module))


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def free_memory(memory_required: int, device: Any = None, keep_loaded: Any = ()) -> int:
    return _mem.free_memory(memory_required, keep_loaded)


def load_models_gpu(
    models: Any,
    memory_required: int = 0,
    force_patch_weights: bool = False,
    minimum_memory_required: Any = None,
    force_full_load: bool = False,
) -> None:
    _mem.load_models(models, memory_required)


def load_model_gpu(model: Any) -> None:
    _mem.load_models([model])


def loaded_models(only_currently_used: bool = False) -> list[Any]:
    return _mem.loaded_models()


class LoadedModel:
    """ComfyUI's record of a model on the device, over one of diffgraph's managed models: `model` is
    what load_models_gpu takes back, `real_model` the torch module."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = get_torch_device()
        self.currently_used = True

    @property
    def real_model(self) -> Any:
        return getattr(self.model, "module", None)

    def model_memory(self) -> int:
        return int(getattr(self.model, "size_bytes", 0))

    def model_loaded_memory(self) -> int:
        return int(getattr(self.model, "resident_bytes", 0))


class _LoadedModels:
    """ComfyUI's `current_loaded_models` list, read live from the model manager."""

    def _records(self) -> list[LoadedModel]:
        return [LoadedModel(m) for m in _mem.loaded_models()]

    def __iter__(self) -> Any:
        return iter(self._records())

    def __len__(self) -> int:
        return len(_mem.loaded_models())

    def __getitem__(self, index: int) -> LoadedModel:
        return self._records()[index]


current_loaded_models = _LoadedModels()


def unload_all_models() -> None:
    _mem.unload_all()


def cleanup_models() -> None:
    """ComfyUI drops models nobody refers to; diffgraph's manager holds weak references already."""


def cleanup_models_gc() -> None:
    import gc

    gc.collect()


def soft_empty_cache(force: bool = False) -> None:
    _mem.soft_empty_cache()


# -- dtypes -------------------------------------------------------------------------------------------


def get_supported_float8_types() -> list[torch.dtype]:
    names = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
    return [getattr(torch, n) for n in names if hasattr(torch, n)]


FLOAT8_TYPES = get_supported_float8_types()


def get_offload_stream(device: Any) -> None:
    return None


def sync_stream(device: Any, stream: Any) -> None:
    """No streams: nothing to wait for."""


def offloaded_memory(loaded_models: Any, device: Any) -> int:
    return 0


def use_more_memory(extra_memory: int, loaded_models: Any, device: Any) -> None:
    """ComfyUI loads more of partly loaded models when memory frees up; diffgraph's manager decides
    placement on each load."""


def supports_dtype(device: Any, dtype: torch.dtype) -> bool:
    if dtype == torch.float32 or is_device_cpu(device) and dtype == torch.bfloat16:
        return True
    return _mem.supports(dtype)


def supports_cast(device: Any, dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float16, torch.bfloat16) or dtype in get_supported_float8_types()


def should_use_fp16(
    device: Any = None, model_params: int = 0, prioritize_performance: bool = True, manual_cast: bool = False
) -> bool:
    if device is not None and is_device_cpu(device):
        return False
    return _mem.supports(torch.float16)


def should_use_bf16(
    device: Any = None, model_params: int = 0, prioritize_performance: bool = True, manual_cast: bool = False
) -> bool:
    if device is not None and is_device_cpu(device):
        return False
    return _mem.supports(torch.bfloat16)


def supports_fp8_compute(device: Any = None) -> bool:
    info = _mem.device_info()
    return bool(info is not None and info.supports_fp8_compute)


def extended_fp16_support() -> bool:
    return True


def unet_dtype(
    device: Any = None, model_params: int = 0, supported_dtypes: Any = None, weight_dtype: Any = None
) -> torch.dtype:
    chosen = _mem.role_dtype("unet")
    if supported_dtypes and chosen not in supported_dtypes:
        return next((d for d in supported_dtypes if _mem.supports(d)), torch.float32)
    return chosen


def unet_manual_cast(
    weight_dtype: Any, inference_device: Any, supported_dtypes: Any = None
) -> torch.dtype | None:
    """The dtype weights stored as `weight_dtype` must be cast to for compute, None when none is needed."""
    if weight_dtype == torch.float32 or (
        weight_dtype is not None and supports_dtype(inference_device, weight_dtype)
    ):
        return None
    for dtype in supported_dtypes or (torch.float16, torch.bfloat16, torch.float32):
        if supports_dtype(inference_device, dtype):
            return dtype
    return torch.float32


def text_encoder_dtype(device: Any = None) -> torch.dtype:
    return _mem.role_dtype("text_encoder")


def vae_dtype(device: Any = None, allowed_dtypes: Any = ()) -> torch.dtype:
    chosen = _mem.role_dtype("vae")
    if allowed_dtypes and chosen not in allowed_dtypes:
        return next((d for d in allowed_dtypes if _mem.supports(d)), torch.float32)
    return chosen


def pick_weight_dtype(dtype: Any, fallback_dtype: Any, device: Any = None) -> Any:
    if dtype is None or (dtype.itemsize > fallback_dtype.itemsize) or not supports_cast(device, dtype):
        return fallback_dtype
    return dtype


def cast_to(
    weight: torch.Tensor,
    dtype: Any = None,
    device: Any = None,
    non_blocking: bool = False,
    copy: bool = False,
    stream: Any = None,
) -> torch.Tensor:
    return weight.to(device=device, dtype=dtype, non_blocking=non_blocking, copy=copy)


def cast_to_device(tensor: torch.Tensor, device: Any, dtype: Any, copy: bool = False) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype, copy=copy, non_blocking=device_supports_non_blocking(device))


# -- attention -----------------------------------------------------------------------------------------


def xformers_enabled() -> bool:
    return False


def xformers_enabled_vae() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return True


def pytorch_attention_enabled_vae() -> bool:
    return True


def pytorch_attention_flash_attention() -> bool:
    return is_nvidia()


def sage_attention_enabled() -> bool:
    return False


def flash_attention_enabled() -> bool:
    return False


def force_upcast_attention_dtype() -> Any:
    return None


def raise_non_oom(exc: BaseException) -> None:
    if not isinstance(exc, OOM_EXCEPTION):
        raise exc


# -- interrupts -------------------------------------------------------------------------------------------


def interrupt_current_processing(value: bool = True) -> None:
    _progress.request_interrupt(value)


def processing_interrupted() -> bool:
    return _progress.is_interrupted()


def throw_exception_if_processing_interrupted() -> None:
    _progress.raise_if_interrupted()
