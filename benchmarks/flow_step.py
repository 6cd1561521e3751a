"""One transformer step of an SD3.5-medium-shaped MMDiT and a FLUX.1-shaped Flux (random weights), ours vs
diffusers in one run: median time per forward, the ratio, peak memory of each forward and the largest
output difference (diffusers loads our weights through its own single-file conversion).

The blocks have the released width (SD3.5 medium: 1536 channels, 24 heads, MMDiT-X dual attention;
FLUX.1: 3072 channels, 24 heads, 4096-wide T5 context); the depth is a flag, since the full models do not
fit (Flux, 12 B parameters) or do not run in reasonable time (SD3.5 medium) on a small CPU machine twice
over. Per-block cost is what the comparison is about: embeddings and final layers are shared by both.

    .venv/bin/python benchmarks/flow_step.py [--models sd3.5-medium flux] [--latent 32] [--text 77]
        [--sd3-depth 4] [--flux-double 1] [--flux-single 2] [--repeats 3] [--device cpu] [--dtype float32]

Peak memory: what the forward allocates at most on top of the weights and inputs (on CUDA the allocator's
peak, on the CPU the profiler's allocation timeline).
Target (issue 16): ours/diffusers <= 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not installed

from engine.diffusion.models import flux as flux_model  # noqa: E402 - after the sys.path line
from engine.diffusion.models import mmdit  # noqa: E402
from engine.kernels import cpu_gemm  # noqa: E402
from engine.kernels.layers import use_fast_kernels  # noqa: E402
from tests.factories.diffusers_flow import flux_transformer_kwargs, sd3_transformer_kwargs  # noqa: E402

PREFIX = "model.diffusion_model."


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights with a unit-scale output (default inits leave the final layers at zero)."""
    from tests.factories.random_weights import randomize_

    randomize_(model, 0, unit=("pos_embed",))
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory a call of `fn` allocates on top of what exists before it (see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    # CPU: the profiler's allocation timeline (each op's own net allocation at its start, frees as
    # "[memory]" events); the resident set would not show it, freed memory stays with the process.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call, `repeats` each; the functions take turns each round (in alternating order), so
    load from other processes on a shared machine hits both alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _checkpoint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}


def sd3_pair(depth: int, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """(ours, diffusers, config) for SD3.5 medium's blocks, `depth` of them (dual attention where the
    release has it)."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    full = mmdit.SD35_MEDIUM
    cfg = full.replace(
        depth=depth, dual_attention_layers=tuple(i for i in full.dual_attention_layers if i < depth)
    )
    ours = randomize(mmdit.MMDiT(cfg).eval())
    ref = diffusers.SD3Transformer2DModel(**sd3_transformer_kwargs(cfg)).eval()
    missing, unexpected = ref.load_state_dict(
        convert_sd3_transformer_checkpoint_to_diffusers(_checkpoint(ours)), strict=False
    )
    if missing or unexpected:
        raise RuntimeError(f"diffusers conversion mismatch: {missing[:3]} {unexpected[:3]}")
    return ours.to(device, dtype), ref.to(device, dtype), cfg


def flux_pair(double: int, single: int, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    import diffusers
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    cfg = flux_model.FLUX_DEV.replace(depth=double, depth_single_blocks=single)
    ours = randomize(flux_model.Flux(cfg).eval())
    ref = diffusers.FluxTransformer2DModel(**flux_transformer_kwargs(cfg)).eval()
    missing, unexpected = ref.load_state_dict(
        convert_flux_transformer_checkpoint_to_diffusers(_checkpoint(ours)), strict=False
    )
    if missing or unexpected:
        raise RuntimeError(f"diffusers conversion mismatch: {missing[:3]} {unexpected[:3]}")
    return ours.to(device, dtype), ref.to(device, dtype), cfg


def _pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' Flux pipeline convention: 2x2 patches per token, ids (0, row, col)."""
    b, c, h, w = x.shape
    tokens = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    ids = torch.stack((torch.zeros_like(rows), rows, cols), dim=-1).reshape(-1, 3).float().to(x.device)
    return tokens, ids


def _unpack(tokens: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    b = tokens.shape[0]
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def step_functions(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple:
    """(our forward, diffusers' forward, parameter count) for one model at the benchmark's input size."""
    gen = torch.Generator().manual_seed(0)
    side, b = args.latent, args.batch
    x = torch.randn(b, 16, side, side, generator=gen).to(device, dtype)
    if name == "sd3.5-medium":
        ours, ref, cfg = sd3_pair(args.sd3_depth, device, dtype)
        ctx = torch.randn(b, args.text, cfg.context_in_dim, generator=gen).to(device, dtype)
        y = torch.randn(b, cfg.adm_in_channels, generator=gen).to(device, dtype)
        t = torch.full((b,), 500.0, device=device)

        def run_ours() -> torch.Tensor:
            return ours(x, t, context=ctx, y=y)

        def run_ref() -> torch.Tensor:
            return ref(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=y, timestep=t).sample

    else:
        ours, ref, cfg = flux_pair(args.flux_double, args.flux_single, device, dtype)
        ctx = torch.randn(b, args.text, cfg.context_in_dim, generator=gen).to(device, dtype)
        y = torch.randn(b, cfg.vec_in_dim, generator=gen).to(device, dtype)
        t = torch.full((b,), 0.5, device=device)
        g = torch.full((b,), 3.5, device=device)
        tokens, img_ids = _pack(x)
        txt_ids = torch.zeros(args.text, 3, device=device)

        def run_ours() -> torch.Tensor:
            return ours(x, t, ctx, y, guidance=g)

        def run_ref() -> torch.Tensor:
            out = ref(
                hidden_states=tokens,
                encoder_hidden_states=ctx,
                pooled_projections=y,
                timestep=t,
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=g,
            ).sample
            return _unpack(out, 16, side, side)

    # What the model manager does to every model it registers (engine.kernels: the faster CPU GEMM
    # library, packed conv weights; other devices keep torch's layers).
    use_fast_kernels(ours)
    params = sum(p.numel() for p in ours.parameters())
    return run_ours, run_ref, params


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=["sd3.5-medium", "flux"], choices=["sd3.5-medium", "flux"]
    )
    parser.add_argument("--latent", type=int, default=32, help="latent side (pixels / 8)")
    parser.add_argument("--text", type=int, default=77, help="context tokens")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sd3-depth", type=int, default=4, help="MMDiT blocks (24 in the release)")
    parser.add_argument("--flux-double", type=int, default=1, help="double blocks (19 in the release)")
    parser.add_argument("--flux-single", type=int, default=2, help="single blocks (38 in the release)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}"
    )
    if device.type == "cpu":
        print(f"our fp32 CPU GEMM library: {cpu_gemm.backend()} (diffusers: torch's default)")
    rows = []
    with torch.inference_mode():
        for name in args.models:
            run_ours, run_ref, params = step_functions(name, args, device, dtype)
            timing = time_interleaved({"ours": run_ours, "diffusers": run_ref}, args.repeats, device)
            mem = {"ours": peak_bytes(run_ours, device), "diffusers": peak_bytes(run_ref, device)}
            diff = (run_ours().float() - run_ref().float()).abs().max().item()
            rows.append((name, params, timing, mem, diff))
            del run_ours, run_ref
    header = (
        f"{'model':>13} {'params':>8} {'ours s':>8} {'diff. s':>8} {'ratio':>6} {'ratio min':>9} "
        f"{'ours MiB':>9} {'diff. MiB':>9} {'max|diff|':>10}"
    )
    print(
        f"\nbatch {args.batch}, latent {args.latent}x{args.latent}, {args.text} context tokens; "
        f"seconds: median of {args.repeats}; ratio = ours/diffusers of the medians, ratio min = of the minima"
    )
    print(header)
    print("-" * len(header))
    for name, params, timing, mem, diff in rows:
        ours, ref = statistics.median(timing["ours"]), statistics.median(timing["diffusers"])
        print(
            f"{name:>13} {params / 1e6:7.0f}M {ours:8.3f} {ref:8.3f} {ours / ref:6.3f} "
            f"{min(timing['ours']) / min(timing['diffusers']):9.3f} {mem['ours'] / 2**20:9.1f} "
            f"{mem['diffusers'] / 2**20:9.1f} {diff:10.2e}"
        )
    print("\nours/diff < 1 means ours is faster (target <= 1.0).")


if __name__ == "__main__":
    main()
