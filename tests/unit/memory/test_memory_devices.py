"""Flags -> MemoryOptions -> device, VRAM state and dtype decisions; fp8 storage with cast at forward."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
from torch import nn

from engine.cli import add_memory_arguments, memory_options_from_args
from engine.memory.devices import (
    GIB,
    DeviceInfo,
    DeviceProbe,
    DeviceProperties,
    MemoryOptions,
    VRAMMode,
    VRAMState,
    select_device,
)
from engine.memory.dtypes import DtypeChoice, ModelRole, choose_dtype, fp8_storage
from engine.memory.manager import ModelManager


class HardwareProbe(DeviceProbe):
    """Describes hardware that is not in this machine (the decisions, not the probing, are under test)."""

    def __init__(
        self,
        *,
        cuda: DeviceProperties | None = None,
        count: int = 1,
        bf16: bool = True,
        mps: bool = False,
    ) -> None:
        self.cuda, self.count, self.bf16, self.mps = cuda, count, bf16, mps

    def cuda_available(self) -> bool:
        return self.cuda is not None

    def cuda_device_count(self) -> int:
        return self.count if self.cuda else 0

    def cuda_properties(self, index: int) -> DeviceProperties:
        assert self.cuda is not None
        return self.cuda

    def cuda_bf16_supported(self, index: int) -> bool:
        return self.bf16

    def mps_available(self) -> bool:
        return self.mps

    def mps_total_memory(self) -> int:
        return 16 * GIB

    def ram_total(self) -> int:
        return 32 * GIB


RTX3090 = DeviceProperties("NVIDIA GeForce RTX 3090", 24 * GIB, (8, 6))
GTX1050 = DeviceProperties("NVIDIA GeForce GTX 1050", 2 * GIB, (6, 1))
K80 = DeviceProperties("Tesla K80", 12 * GIB, (3, 7))


def parse(*argv: str) -> MemoryOptions:
    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    return memory_options_from_args(parser.parse_args(list(argv)))


def test_flag_parsing() -> None:
    opts = parse("--lowvram", "--reserve-vram", "1.5", "--unet-dtype", "fp8_e4m3fn", "--vae-dtype", "fp32")
    assert opts.vram_mode is VRAMMode.LOW
    assert opts.reserve_vram_gb == 1.5
    assert opts.unet_dtype == torch.float8_e4m3fn
    assert opts.vae_dtype == torch.float32
    assert opts.text_encoder_dtype is None
    assert parse().vram_mode is VRAMMode.AUTO
    assert parse("--gpu-only").vram_mode is VRAMMode.GPU_ONLY
    assert parse("--ram-budget", "8").ram_budget_gb == 8


def test_conflicting_flags_are_rejected() -> None:
    with pytest.raises(SystemExit):
        parse("--lowvram", "--highvram")
    with pytest.raises(SystemExit):
        parse("--unet-dtype", "fp64")
    with pytest.raises(ValueError, match="--cpu"):
        parse("--cpu", "--lowvram")


def test_select_device_cuda_ampere() -> None:
    info = select_device(parse(), probe=HardwareProbe(cuda=RTX3090))
    assert info.compute_device == torch.device("cuda", 0)
    assert info.offload_device == torch.device("cpu")
    assert info.vram_state is VRAMState.NORMAL_VRAM
    assert info.supports_fp16 and info.supports_bf16
    assert "RTX 3090" in info.name
    assert choose_dtype(info, ModelRole.UNET) == DtypeChoice(torch.float16, torch.float16)
    assert choose_dtype(info, ModelRole.TEXT_ENCODER).storage == torch.float16
    # KL-VAE: fp16 overflows to NaN, so bf16 where the device has it.
    assert choose_dtype(info, ModelRole.VAE) == DtypeChoice(torch.bfloat16, torch.bfloat16)


def test_select_device_small_pascal_goes_lowvram_and_fp32_vae() -> None:
    info = select_device(parse(), probe=HardwareProbe(cuda=GTX1050, bf16=False))
    assert info.vram_state is VRAMState.LOW_VRAM  # <= 4 GB
    assert choose_dtype(info, ModelRole.UNET).compute == torch.float16
    assert choose_dtype(info, ModelRole.VAE) == DtypeChoice(torch.float32, torch.float32)
    assert select_device(parse("--normalvram"), probe=HardwareProbe(cuda=GTX1050)).vram_state is (
        VRAMState.NORMAL_VRAM
    )


def test_old_gpu_computes_in_fp32_and_fp8_is_storage_only() -> None:
    info = select_device(parse("--unet-dtype", "fp8_e4m3fn"), probe=HardwareProbe(cuda=K80, bf16=False))
    assert not info.supports_fp16
    assert choose_dtype(info, ModelRole.UNET) == DtypeChoice(torch.float8_e4m3fn, torch.float32)
    ampere = select_device(parse("--unet-dtype", "fp8_e5m2"), probe=HardwareProbe(cuda=RTX3090))
    assert choose_dtype(ampere, ModelRole.UNET) == DtypeChoice(torch.float8_e5m2, torch.float16)


def test_flags_override_defaults() -> None:
    probe = HardwareProbe(cuda=RTX3090)
    assert select_device(parse("--cpu"), probe=probe).compute_device == torch.device("cpu")
    gpu_only = select_device(parse("--gpu-only"), probe=probe)
    assert gpu_only.vram_state is VRAMState.HIGH_VRAM and gpu_only.offload_device == gpu_only.compute_device
    assert select_device(parse("--novram"), probe=probe).vram_state is VRAMState.NO_VRAM
    assert select_device(parse("--reserve-vram", "2"), probe=probe).reserve_bytes == 2 * GIB
    fp32 = select_device(parse("--force-fp32"), probe=probe)
    assert all(choose_dtype(fp32, r) == DtypeChoice(torch.float32, torch.float32) for r in ModelRole)
    explicit = select_device(parse("--force-fp32", "--vae-dtype", "fp16"), probe=probe)
    assert choose_dtype(explicit, ModelRole.VAE).storage == torch.float16  # explicit flag beats --force-fp32
    cpu_vae = select_device(parse("--cpu-vae"), probe=probe)
    assert cpu_vae.vae_device == torch.device("cpu") and choose_dtype(cpu_vae, ModelRole.VAE).compute == (
        torch.float32
    )
    with pytest.raises(ValueError, match="--cuda-device 3"):
        select_device(parse("--cuda-device", "3"), probe=HardwareProbe(cuda=RTX3090, count=2))


def test_mps_and_cpu() -> None:
    mps = select_device(parse(), probe=HardwareProbe(mps=True))
    assert mps.compute_device == torch.device("mps") and mps.vram_state is VRAMState.SHARED
    assert choose_dtype(mps, ModelRole.UNET).storage == torch.float16
    assert choose_dtype(mps, ModelRole.VAE).storage == torch.float32
    cpu = select_device(parse(), probe=HardwareProbe())
    assert cpu.compute_device == torch.device("cpu") and cpu.total_memory == 32 * GIB
    assert all(choose_dtype(cpu, r) == DtypeChoice(torch.float32, torch.float32) for r in ModelRole)


def test_real_probe_on_this_machine() -> None:
    info = select_device(MemoryOptions())
    expected = (
        "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert info.kind == expected
    assert info.total_memory > 0


FP8 = [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]


@pytest.mark.skipif(not FP8, reason="this torch has no float8 dtypes")
@pytest.mark.parametrize("storage", FP8, ids=str)
def test_fp8_storage_matches_fp32_within_fp8_tolerance(storage: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 8))
    reference = copy.deepcopy(model)
    x = torch.randn(2, 4, 8, 8)
    hooks = fp8_storage(model, storage, torch.float32)
    assert model[0].weight.dtype == storage and model[3].weight.dtype == storage
    assert model[0].bias.dtype == torch.float32
    assert len(hooks) == 2
    with torch.no_grad():
        out = model(x)
        exact = reference(x)
        # Same computation with the weights rounded through fp8 on our side: must agree to fp32 precision.
        for ref_layer in (reference[0], reference[3]):
            ref_layer.weight.copy_(ref_layer.weight.to(storage).to(torch.float32))
        rounded = reference(x)
    assert model[0].weight.dtype == storage  # still stored in fp8 after the forward
    assert torch.allclose(out, rounded, atol=1e-5)
    # fp8 keeps 3 (e4m3) or 2 (e5m2) mantissa bits: relative weight error <= 2**-4 / 2**-3.
    rel = (out - exact).norm() / exact.norm()
    assert rel < (0.07 if storage == torch.float8_e4m3fn else 0.14)
    hooks.remove()
    with pytest.raises(RuntimeError):
        model(x)  # without the cast hooks fp8 weights cannot run: proves the hooks did the work


@pytest.mark.skipif(not FP8, reason="this torch has no float8 dtypes")
def test_manager_runs_fp8_model_with_compute_dtype(cpu_info: DeviceInfo) -> None:
    from engine.memory.dtypes import store_weights_as

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 32))
    reference = copy.deepcopy(model)
    store_weights_as(model, torch.float8_e4m3fn)
    fp8_bytes = 2 * (32 * 32 * 1 + 32 * 4)
    manager = ModelManager(cpu_info, device_budget_bytes=10 * fp8_bytes)
    handle = manager.register(model, compute_dtype=torch.float32)
    assert handle.size_bytes == fp8_bytes
    manager.load(handle)
    x = torch.randn(4, 32)
    with torch.no_grad():
        out, exact = model(x), reference(x)
    assert ((out - exact).norm() / exact.norm()) < 0.07
    # The float32 copy of one layer existed only during its forward, and was counted.
    assert manager.peak_device_bytes == fp8_bytes + 32 * 32 * 4
    assert manager.current_device_bytes == fp8_bytes
