"""The same model, memory and sampling code paths on a CUDA device, compared with the CPU result.

CI has no GPU, so these skip there; they are run on a lent GPU machine (see docs/testing.md).
"""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.checkpoints import loader
from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.ksampler import prepare_noise, sample
from engine.diffusion.sampling.model_sampling import model_sampling_for
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from engine.runtime import sampling_library
from tests.factories import checkpoints as synthetic

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def run_txt2img(ck, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ck.unet.to(device=device, dtype=dtype)
    ck.vae.to(device=device)
    model = DiffusionModel(ck.unet, model_sampling_for(ck.spec.prediction_type))
    cond, _ = ck.text_encoder.encode("a red fox in the snow")
    uncond, _ = ck.text_encoder.encode("")
    latent = torch.zeros(1, 4, 8, 8)
    noise = prepare_noise(latent, seed=42)
    library = sampling_library()
    samples = sample(
        model,
        noise.to(device),
        6,
        5.0,
        "dpmpp_2m",
        "karras",
        [[cond.to(device), {}]],
        [[uncond.to(device), {}]],
        latent.to(device),
        seed=42,
        samplers=library.samplers,
        schedulers=library.schedulers,
    )
    with torch.no_grad():
        return ck.vae.decode(samples.to(device=device, dtype=next(ck.vae.parameters()).dtype)).float().cpu()


def test_txt2img_on_cuda_matches_cpu(tmp_path):
    path = synthetic.write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1", seed=3)
    on_cpu = run_txt2img(loader.load_checkpoint(path), torch.device("cpu"), torch.float32)
    on_gpu = run_txt2img(loader.load_checkpoint(path), torch.device("cuda"), torch.float32)
    assert torch.isfinite(on_gpu).all()
    # Noise comes from the CPU generator, so the device only changes rounding (TF32 may be on).
    assert (on_gpu - on_cpu).abs().max().item() < 5e-2
    half = run_txt2img(loader.load_checkpoint(path), torch.device("cuda"), torch.float16)
    assert torch.isfinite(half).all() and (half - on_cpu).abs().mean().item() < 5e-2


def test_device_selection_and_manager_on_cuda():
    info = select_device(MemoryOptions())
    assert info.compute_device.type == "cuda" and info.offload_device.type == "cpu"
    manager = ModelManager(info)
    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    handle = manager.register(module, name="mlp")
    x = torch.randn(3, 64)
    expected = module(x)
    with manager.use(handle):
        assert next(module.parameters()).device.type == "cuda"
        got = module(x.to("cuda")).cpu()
    assert torch.allclose(got, expected, atol=1e-5)
    manager.unload_all()
    assert next(module.parameters()).device.type == "cpu"
