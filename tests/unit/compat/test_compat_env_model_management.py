"""`comfy.model_management` answered by the runtime's device decision and model manager: loading a
patcher (a MODEL/CLIP/VAE `.patcher`, or a wrapper holding one) applies its weight patches through
diffgraph's ModelManager; devices, dtypes and memory come from the DEVICE service; `comfy.cli_args`
reflects diffgraph's options."""

from __future__ import annotations

import importlib
from dataclasses import replace

import torch

from engine.folders import Folders
from engine.memory.devices import DeviceInfo, MemoryOptions, VRAMMode, VRAMState
from engine.memory.manager import ModelManager
from engine.runtime import build_runtime


def bound(tmp_path, **kwargs):
    runtime = build_runtime(Folders.create(tmp_path), **kwargs)
    return runtime, importlib.import_module("comfy.model_management")


class Wrapper:
    """What ComfyUI packs pass around: an object whose `.patcher` is the model's patcher."""

    def __init__(self, patcher) -> None:
        self.patcher = patcher


def test_load_models_gpu_applies_a_patchers_weight_patches(tmp_path):
    runtime, mm = bound(tmp_path)
    manager = runtime.services["model_manager"]
    linear = torch.nn.Linear(2, 2, bias=False)
    original = linear.weight.detach().clone()
    handle = manager.register(linear, name="tiny")
    patcher = manager.patcher(handle)
    patcher.add_patches({"weight": torch.ones(2, 2)}, strength_patch=0.5)
    mm.load_models_gpu([patcher], memory_required=1024)
    assert torch.allclose(linear.weight, original + 0.5)
    assert handle in mm.loaded_models()
    (record,) = [r for r in mm.current_loaded_models if r.model is handle]
    assert record.real_model is linear and record.model_memory() == 16
    plain = manager.patcher(handle)  # a clone without patches: loading it restores the weights
    mm.load_model_gpu(Wrapper(plain))
    assert torch.allclose(linear.weight, original)
    mm.load_models_gpu(["not a model", None])  # ignored, as it is not one of ours
    mm.unload_all_models()
    mm.soft_empty_cache()
    assert mm.module_size(linear) == 16


def test_devices_and_dtypes_come_from_the_device_service(tmp_path):
    fake_gpu = replace(
        DeviceInfo.cpu(MemoryOptions(vram_mode=VRAMMode.LOW)),
        compute_device=torch.device("cuda", 0),
        name="cuda:0 Test GPU",
        vram_state=VRAMState.LOW_VRAM,
        total_memory=8 * 1024**3,
        supports_fp16=True,
        supports_bf16=True,
        vae_device=torch.device("cuda", 0),
    )
    services = {"device": fake_gpu, "model_manager": ModelManager(fake_gpu)}
    _, mm = bound(tmp_path, services=services)
    assert mm.get_torch_device() == torch.device("cuda", 0)
    assert mm.intermediate_device() == torch.device("cpu") and mm.unet_offload_device() == torch.device("cpu")
    assert mm.vae_device() == torch.device("cuda", 0)
    assert mm.vram_state is mm.VRAMState.LOW_VRAM and mm.cpu_state is mm.CPUState.GPU
    assert mm.get_total_memory() == 8 * 1024**3 and mm.total_vram == 8 * 1024
    assert mm.get_torch_device_name(torch.device("cuda", 0)) == "cuda:0 Test GPU"
    assert mm.unet_dtype() == torch.float16 and mm.text_encoder_dtype() == torch.float16
    assert mm.vae_dtype() == torch.bfloat16  # diffgraph keeps the KL-VAE out of fp16
    assert mm.should_use_fp16() and mm.should_use_bf16() and not mm.should_use_fp16(torch.device("cpu"))
    assert mm.unet_manual_cast(torch.float16, torch.device("cuda", 0)) is None
    assert mm.is_device_cuda(mm.get_torch_device()) and not mm.is_device_mps(mm.get_torch_device())
    args = importlib.import_module("comfy.cli_args").args
    assert args.lowvram is True and args.cpu is False and args.highvram is False


def test_without_models_everything_answers_for_the_cpu(tmp_path):
    runtime, mm = bound(tmp_path, with_models=False)
    assert mm.get_torch_device() == torch.device("cpu")
    assert mm.unet_dtype() == torch.float32 and mm.vae_dtype() == torch.float32
    assert mm.cpu_mode() and mm.vram_state is mm.VRAMState.DISABLED
    assert mm.loaded_models() == [] and mm.free_memory(1024, None) == 0
    mm.load_models_gpu([object()])  # nothing to load with: a no-op
    assert (
        mm.cast_to_device(torch.ones(2, dtype=torch.float64), torch.device("cpu"), torch.float32).dtype
        == torch.float32
    )
    assert mm.dtype_size(torch.float16) == 2 and mm.OOM_EXCEPTION is torch.cuda.OutOfMemoryError
    args = importlib.import_module("comfy.cli_args").args
    assert args.cpu is True and args.output_directory == str(runtime.folders.output)
