"""Sampler overhead: how much time sampling spends outside the model.

1. Every registered sampler with a zero-cost denoiser (returns x·0) on a 1×4×64×64 latent:
   wall time per step and per model evaluation (median over several runs). This is pure sampler
   arithmetic plus seeded noise generation.
2. The full-size SD1.5 UNet (random weights, ``UNetConfig.sd15()``), batch 2 through CFG (cond and
   uncond in one call) on a 32×32 latent, a few steps per sampler through ``ksampler.sample``: the
   share of each step spent outside the UNet forward (target < 2%), measured with a timing wrapper
   around the UNet.

Usage: python benchmarks/sampler_overhead.py [--threads N] [--skip-unet] [--unet-steps 3]
Prints a table; not a pass/fail test (DESIGN.md §6).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.ksampler import sample
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from engine.diffusion.sampling.registry import default_sampler_registry
from engine.diffusion.sampling.schedulers import karras
from engine.runtime import sampling_library


class CountingZero:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * 0.0


class TimedUNet:
    """Wraps a UNet and accumulates the wall time of its forward calls."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.seconds = 0.0
        self.calls = 0

    def parameters(self) -> Any:
        return self.unet.parameters()

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.unet(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def bench_zero_cost(steps: int, repeats: int) -> None:
    reg = default_sampler_registry()
    ms = ModelSamplingDiscrete("eps")
    x = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    print(f"\n[1] zero-cost denoiser, latent 1x4x64x64, {steps} karras steps, median of {repeats} runs")
    print(f"{'sampler':<20}{'ms/step':>10}{'NFE/step':>10}{'ms/NFE':>10}")
    for spec in reg:
        sig = karras(ms, steps + 1 if spec.discard_penultimate_sigma else steps)
        if spec.discard_penultimate_sigma:
            sig = torch.cat([sig[:-2], sig[-1:]])
        times, nfe = [], 0
        for _ in range(repeats):
            den = CountingZero()
            noise = spec.make_noise(x, sig, 1)
            t0 = time.perf_counter()
            spec(den, x * float(sig[0]), sig, noise=noise)
            times.append(time.perf_counter() - t0)
            nfe = den.calls
        med = statistics.median(times)
        print(
            f"{spec.name:<20}{med / steps * 1e3:>10.3f}{nfe / steps:>10.2f}{med / max(nfe, 1) * 1e3:>10.3f}"
        )


def bench_unet(steps: int, samplers: list[str]) -> None:
    from engine.diffusion.models.unet import UNetConfig, UNetModel

    t0 = time.perf_counter()
    with torch.no_grad():
        unet = UNetModel(UNetConfig.sd15()).eval()
    n_params = sum(p.numel() for p in unet.parameters())
    print(
        f"\n[2] SD1.5 UNet ({n_params / 1e6:.0f}M params, random weights, built in {time.perf_counter() - t0:.1f}s)"
    )
    timed = TimedUNet(unet)
    model = DiffusionModel(timed, ModelSamplingDiscrete("eps"))
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, 768, generator=g), {}]]
    neg = [[torch.randn(1, 77, 768, generator=g), {}]]
    lat = torch.zeros(1, 4, 32, 32)
    lib = sampling_library()
    with torch.no_grad():  # warm-up (allocator, kernels)
        sample(
            model,
            None,
            1,
            7.0,
            "euler",
            "karras",
            pos,
            neg,
            lat,
            seed=0,
            samplers=lib.samplers,
            schedulers=lib.schedulers,
        )
    print(f"batch 2 via CFG at 32x32 latent, {steps} steps per run")
    print(f"{'sampler':<20}{'s/step':>10}{'UNet s':>10}{'outside ms/step':>17}{'outside %':>11}")
    for name in samplers:
        timed.seconds, timed.calls = 0.0, 0
        t0 = time.perf_counter()
        with torch.no_grad():
            sample(
                model,
                None,
                steps,
                7.0,
                name,
                "karras",
                pos,
                neg,
                lat,
                seed=1,
                samplers=lib.samplers,
                schedulers=lib.schedulers,
            )
        total = time.perf_counter() - t0
        outside = total - timed.seconds
        print(
            f"{name:<20}{total / steps:>10.3f}{timed.seconds:>10.2f}{outside / steps * 1e3:>17.2f}{100 * outside / total:>10.2f}%"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-unet", action="store_true")
    ap.add_argument("--unet-steps", type=int, default=3)
    ap.add_argument("--unet-samplers", default="euler,dpmpp_2m,euler_ancestral,dpmpp_2m_sde,uni_pc")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_zero_cost(args.steps, args.repeats)
    if not args.skip_unet:
        bench_unet(args.unet_steps, args.unet_samplers.split(","))


if __name__ == "__main__":
    main()
