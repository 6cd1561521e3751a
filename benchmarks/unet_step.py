"""Time one forward of the full SD1.5 UNet (random weights) and compare with diffusers.

Prints, for batch 2 (as with classifier-free guidance) at 64x64 and 32x32 latents: the median time of
one forward after a warm-up, its FLOP count (torch.utils.flop_counter, plus scaled-dot-product
attention, which the counter does not see on CPU), the achieved GFLOP/s next to the machine's
measured fp32 matmul peak (a large product, torch.mm or the engine's GEMM), and the same timing for
diffusers' UNet2DConditionModel loaded with the same weights through diffusers' own single-file conversion.

    .venv/bin/python benchmarks/unet_step.py [--repeats 3] [--sizes 64 32] [--no-diffusers]

Targets (issue 3): >= 50 % of the matmul peak at 64x64, and no slower than diffusers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.diffusion.models.unet import UNetConfig, UNetModel
from engine.kernels import cpu_conv, cpu_gemm
from engine.kernels.layers import use_fast_kernels

aten = torch.ops.aten


def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    # QK^T and (softmax)V: two batched matmuls of 2*n*m*d flops per head.
    b, h, n, d = q
    m, dv = k[-2], v[-1]
    return 2 * b * h * n * m * d + 2 * b * h * n * m * dv


def _sdpa_ops() -> dict:
    ops = {}
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    ):
        op = getattr(aten, name, None)
        if op is not None:
            ops[op] = _sdpa_flops
    return ops


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted with torch's own kernels (the counter does not know oneDNN's ops, so
    engine.kernels' fast paths are switched off while counting; the arithmetic is the same)."""
    mapping = _sdpa_ops()
    previous_library, previous_pack = cpu_gemm.backend(), os.environ.get(cpu_conv.ENV_VAR)
    cpu_gemm.set_backend("blas")
    os.environ[cpu_conv.ENV_VAR] = "0"
    try:
        # The counter's own formulas win where it has them (GPU SDPA kernels); ours fill the CPU gap.
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            fn()
    finally:
        cpu_gemm.set_backend(previous_library)
        if previous_pack is None:
            os.environ.pop(cpu_conv.ENV_VAR)
        else:
            os.environ[cpu_conv.ENV_VAR] = previous_pack
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each function; the functions take turns in every round so that
    load from other processes on a shared machine hits them alike (the ratio is what counts)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    """Best observed GFLOP/s of an n x n x n matmul (the machine's practical dense peak), with torch.mm
    and, on the CPU, with the engine's GEMM (oneDNN where it is the faster library): the better of both."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    products: list[Callable[[], object]] = [lambda: torch.mm(a, b)]
    if device.type == "cpu":
        products.append(lambda: cpu_gemm.linear(a, b))
    best = float("inf")
    for product in products:
        product()
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            product()
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def build_diffusers(ours: UNetModel):
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = {
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "sample_size": 64,
    }
    checkpoint = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, config)
    p = next(ours.parameters())
    ref = diffusers.UNet2DConditionModel(**config).eval()
    if p.device.type != "cpu" or p.dtype != torch.float32:
        ref = ref.to(device=p.device, dtype=p.dtype)
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"diffusers conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return ref


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32], help="latent sides")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}"
    )
    peak = matmul_peak(device, dtype)
    print(f"matmul peak (2048^3, torch.mm and the engine's GEMM, best of 8 each): {peak:.1f} GFLOP/s")

    ours = UNetModel(UNetConfig.sd15(), dtype=dtype, device=device).eval()
    # What the model manager does to every model it registers: Linear layers on the faster GEMM library.
    print(f"CPU fp32 GEMM library: {cpu_gemm.backend()} ({use_fast_kernels(ours)} Linear layers switched)")
    ref = None if args.no_diffusers else build_diffusers(ours)

    rows = []
    with torch.inference_mode():
        for size in args.sizes:
            gen = torch.Generator().manual_seed(size)
            x = torch.randn(args.batch, 4, size, size, generator=gen).to(device, dtype)
            t = torch.full((args.batch,), 999.0, device=device)
            ctx = torch.randn(args.batch, 77, 768, generator=gen).to(device, dtype)

            def run_ours(x=x, t=t, ctx=ctx) -> torch.Tensor:
                return ours(x, t, ctx)

            flops = count_flops(run_ours)
            fns: dict[str, Callable[[], object]] = {"ours": run_ours}
            if ref is not None:

                def run_ref(x=x, t=t, ctx=ctx, ref=ref) -> torch.Tensor:
                    return ref(x, t, encoder_hidden_states=ctx).sample

                fns["diffusers"] = run_ref
            timing = time_interleaved(fns, args.repeats, device)
            t_ours, t_ref = timing["ours"], timing.get("diffusers")
            max_diff = None
            if ref is not None:
                max_diff = (run_ours().float() - run_ref().float()).abs().max().item()
            rows.append((size, flops, t_ours, t_ref, max_diff))

    # Measured again at the end, the better figure kept: on a shared machine the first may be depressed.
    peak = max(peak, matmul_peak(device, dtype))
    print(f"matmul peak, best of start and end: {peak:.1f} GFLOP/s")
    print()
    header = (
        f"{'latent':>8} {'GFLOP':>9} {'ours s':>9} {'GFLOP/s':>9} {'% peak':>7} "
        f"{'diffusers s':>12} {'ours/diff':>10} {'max|diff|':>10}"
    )
    print(header)
    print("-" * len(header))
    for size, flops, t_ours, t_ref, max_diff in rows:
        rate = flops / t_ours / 1e9
        ref_s = f"{t_ref:12.3f}" if t_ref is not None else f"{'-':>12}"
        ratio = f"{t_ours / t_ref:10.3f}" if t_ref is not None else f"{'-':>10}"
        diff = f"{max_diff:10.2e}" if max_diff is not None else f"{'-':>10}"
        print(
            f"{f'{args.batch}x{size}x{size}':>8} {flops / 1e9:9.1f} {t_ours:9.3f} {rate:9.1f} "
            f"{100 * rate / peak:6.1f}% {ref_s} {ratio} {diff}"
        )
    print("\nours/diff < 1 means our UNet is faster; target: >= 50 % of peak at 64x64 and ours/diff <= 1.")


if __name__ == "__main__":
    main()
