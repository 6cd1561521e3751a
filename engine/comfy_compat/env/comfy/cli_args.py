"""ComfyUI's `comfy.cli_args`: `args` with ComfyUI's attribute names and defaults, set from diffgraph's
own options where they mean the same (folders, device, VRAM mode, dtypes); `parser` builds the same
namespace. The command line itself is never parsed here: it is diffgraph's."""

from __future__ import annotations

import argparse
import enum

from engine.comfy_compat.binding import current as _current
from engine.execution.context import DEVICE as _DEVICE
from engine.execution.context import PREVIEWER as _PREVIEWER


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class PerformanceFeature(enum.Enum):
    Fp16Accumulation = "fp16_accumulation"
    Fp8MatrixMultiplication = "fp8_matrix_mult"
    CublasOps = "cublas_ops"
    AutoTune = "autotune"


# ComfyUI's switches (all default False), by flag name.
_SWITCHES = [
    "auto-launch",
    "disable-auto-launch",
    "cuda-malloc",
    "disable-cuda-malloc",
    "force-fp32",
    "force-fp16",
    "fp32-unet",
    "fp64-unet",
    "bf16-unet",
    "fp16-unet",
    "fp8_e4m3fn-unet",
    "fp8_e5m2-unet",
    "fp8_e8m0fnu-unet",
    "fp16-vae",
    "fp32-vae",
    "bf16-vae",
    "cpu-vae",
    "fp8_e4m3fn-text-enc",
    "fp8_e5m2-text-enc",
    "fp16-text-enc",
    "fp32-text-enc",
    "bf16-text-enc",
    "force-channels-last",
    "disable-ipex-optimize",
    "supports-fp8-compute",
    "cache-classic",
    "cache-none",
    "use-split-cross-attention",
    "use-quad-cross-attention",
    "use-pytorch-cross-attention",
    "use-sage-attention",
    "use-flash-attention",
    "disable-xformers",
    "force-upcast-attention",
    "dont-upcast-attention",
    "gpu-only",
    "highvram",
    "normalvram",
    "lowvram",
    "novram",
    "cpu",
    "async-offload",
    "force-non-blocking",
    "disable-smart-memory",
    "deterministic",
    "mmap-torch-files",
    "disable-mmap",
    "dont-print-server",
    "quick-test-for-ci",
    "windows-standalone-build",
    "disable-metadata",
    "disable-all-custom-nodes",
    "disable-api-nodes",
    "multi-user",
    "log-stdout",
    "enable-compress-response-body",
]

# ComfyUI's valued options and their defaults.
_VALUES: dict[str, object] = {
    "listen": "127.0.0.1",
    "port": 8188,
    "tls-keyfile": None,
    "tls-certfile": None,
    "enable-cors-header": None,
    "max-upload-size": 100.0,
    "base-directory": None,
    "extra-model-paths-config": None,
    "output-directory": None,
    "temp-directory": None,
    "input-directory": None,
    "user-directory": None,
    "cuda-device": None,
    "default-device": None,
    "directml": None,
    "oneapi-device-selector": None,
    "preview-size": 512,
    "cache-lru": 0,
    "reserve-vram": None,
    "default-hashing-function": "sha256",
    "fast": None,
    "whitelist-custom-nodes": [],
    "verbose": "INFO",
    "front-end-version": "comfyanonymous/ComfyUI@latest",
    "front-end-root": None,
    "comfy-api-base": "https://api.comfy.org",
    "database-url": "sqlite:///:memory:",
}


def _parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="comfyui-compatible-args", add_help=False)
    for flag in _SWITCHES:
        built.add_argument(f"--{flag}", action="store_true")
    for flag, default in _VALUES.items():
        built.add_argument(f"--{flag}", default=default)
    built.add_argument("--preview-method", default=LatentPreviewMethod.NoPreviews)
    return built


parser = _parser()
# diffgraph's per-role dtype options as ComfyUI's flag prefixes (--fp16-unet, --bf16-vae, ...).
_DTYPE_FLAGS = {
    "torch.float32": "fp32",
    "torch.float16": "fp16",
    "torch.bfloat16": "bf16",
    "torch.float8_e4m3fn": "fp8_e4m3fn",
    "torch.float8_e5m2": "fp8_e5m2",
}


def _from_runtime(namespace: argparse.Namespace) -> argparse.Namespace:
    binding = _current()
    folders = binding.folders
    namespace.base_directory = str(folders.base)
    namespace.output_directory = str(folders.output)
    namespace.input_directory = str(folders.input)
    namespace.temp_directory = str(folders.temp)
    namespace.user_directory = str(folders.user)
    # The runtime's --preview-method (ComfyUI's enum values are the same words). A runtime built without
    # models has no previewer service; latent->RGB, which needs no decoder file, stands in there.
    method = getattr(binding.services.get(_PREVIEWER), "method", LatentPreviewMethod.Latent2RGB.value)
    namespace.preview_method = LatentPreviewMethod(method)
    namespace.fast = set()
    device = binding.services.get(_DEVICE)
    if device is None:  # a runtime that runs no model (e.g. `diffgraph nodes`)
        namespace.cpu = True
        return namespace
    options = device.options
    namespace.cpu = bool(options.cpu) or device.is_cpu
    namespace.cpu_vae = bool(options.cpu_vae)
    namespace.cuda_device = options.cuda_device
    namespace.reserve_vram = options.reserve_vram_gb
    namespace.force_fp32 = bool(options.force_fp32)
    namespace.force_fp16 = bool(options.force_fp16)
    for role, suffix in (("unet_dtype", "unet"), ("vae_dtype", "vae"), ("text_encoder_dtype", "text_enc")):
        name = _DTYPE_FLAGS.get(str(getattr(options, role, None)))
        if name is not None and hasattr(namespace, f"{name}_{suffix}"):
            setattr(namespace, f"{name}_{suffix}", True)
    mode = getattr(options.vram_mode, "value", "auto")
    flags = {"gpu-only": "gpu_only", "highvram": "highvram", "normalvram": "normalvram"}
    flags.update({"lowvram": "lowvram", "novram": "novram"})
    if mode in flags:
        setattr(namespace, flags[mode], True)
    return namespace


args = _from_runtime(parser.parse_args([]))
