"""GPU benchmark (issue 20): SD1.5 at 512 px and SDXL at 1024 px, ours vs diffusers in one process.

For each model: the full-size UNet with random weights (diffusers loads ours through its own single-file
conversion), batch 2 (a CFG step), interleaved timed steps: median seconds per step and it/s, the peak
memory each side allocates during a step, the VAE decode time at the image size, the resulting seconds
per image for `--steps` steps (steps x step + decode), and the largest output difference (SD1.5 only:
SDXL's ADM vector is built differently by the two sides here, so only its timing is compared). Then ours
once more under a forced VRAM budget (`--vram-limit-gb`): the model manager loads the UNet partially and
streams the rest per forward pass; the step time and the share of weights resident are printed.

    .venv/bin/python benchmarks/gpu.py [--device cuda] [--dtype float16] [--models sd15 sdxl] [--steps 20]
        [--repeats 5] [--vram-limit-gb 3]
    .venv/bin/python benchmarks/gpu.py --device cpu --tiny    # the script itself, on any machine

ComfyUI is not part of this script: the device machine has no network, so ComfyUI would have to be
carried there with its own environment; compare with benchmarks/comfy_parity.py's setup where it exists.
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

from engine.diffusion.models.unet import UNetConfig, UNetModel  # noqa: E402
from engine.diffusion.models.vae import AutoencoderKL, VAEConfig  # noqa: E402
from engine.kernels.layers import use_fast_kernels  # noqa: E402
from tests.factories.checkpoints import diffusers_unet_config, diffusers_vae_config  # noqa: E402

MODELS = {"sd15": (UNetConfig.sd15, 512), "sdxl": (UNetConfig.sdxl, 1024)}
TINY = {"sd15": (UNetConfig.tiny, 64), "sdxl": (UNetConfig.tiny_sdxl, 64)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def unet_pair(cfg: UNetConfig, device: torch.device, dtype: torch.dtype) -> tuple[UNetModel, Any]:
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ours = UNetModel(cfg).eval()
    conf = {k: v for k, v in diffusers_unet_config(cfg).items() if not k.startswith("_")}
    checkpoint = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    ref = diffusers.UNet2DConditionModel(**conf).eval()
    missing, unexpected = ref.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, conf), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"diffusers conversion mismatch: {missing[:3]} {unexpected[:3]}")
    ours = ours.to(device, dtype)
    use_fast_kernels(ours)  # as the model manager does at registration (CPU fast paths)
    return ours, ref.to(device, dtype)


def step_functions(cfg: UNetConfig, size: int, ours: UNetModel, ref: Any, device: torch.device) -> tuple:
    dtype = next(ours.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    side = size // 8
    x = torch.randn(2, cfg.in_channels, side, side, generator=g).to(device, dtype)
    t = torch.tensor([999.0, 999.0], device=device)
    ctx = torch.randn(2, 77, cfg.context_dim or 768, generator=g).to(device, dtype)
    y = None
    ref_kwargs: dict[str, Any] = {}
    if cfg.adm_in_channels is not None:
        y = torch.randn(2, cfg.adm_in_channels, generator=g).to(device, dtype)
        pooled = cfg.adm_in_channels - 6 * 256
        ref_kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, generator=g).to(device, dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
        }

    def run_ours() -> torch.Tensor:
        return ours(x, t, ctx, y=y)

    def run_ref() -> torch.Tensor:
        return ref(x, t, encoder_hidden_states=ctx, **ref_kwargs).sample

    return run_ours, run_ref


def vae_times(size: int, device: torch.device, dtype: torch.dtype, repeats: int, tiny: bool) -> tuple:
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = VAEConfig.tiny() if tiny else VAEConfig.sd()
    ours = AutoencoderKL(cfg).eval()
    conf = {k: v for k, v in diffusers_vae_config(cfg).items() if not k.startswith("_")}
    checkpoint = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    ref = diffusers.AutoencoderKL(**conf).eval()
    ref.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, conf), strict=False)
    ours, ref = ours.to(device, dtype), ref.to(device, dtype)
    use_fast_kernels(ours)
    side = size // cfg.downscale
    z = torch.randn(1, cfg.z_channels, side, side, generator=torch.Generator().manual_seed(1)).to(
        device, dtype
    )
    fns = {"ours": lambda: ours.decode(z), "diffusers": lambda: ref.decode(z).sample}
    times = interleave(fns, repeats, device)
    return times["ours"], times["diffusers"]


def interleave(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up: kernels chosen, caches and allocator filled
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in samples.items()}


def forced_budget_step(
    ours: UNetModel, run: Callable[[], object], device: torch.device, limit_gb: float
) -> str:
    """Our step with the model manager holding the UNet under a VRAM budget (partial load + streaming)."""
    from engine.memory.devices import DeviceInfo, select_device
    from engine.memory.manager import ModelManager

    info = select_device() if device.type == "cuda" else DeviceInfo.cpu()
    ours.to("cpu")
    manager = ModelManager(info, device_budget_bytes=int(limit_gb * 2**30))
    handle = manager.register(ours, name="unet")
    with manager.use(handle):
        seconds = statistics.median(timed(run, device) for _ in range(3))
        resident = handle.resident_bytes / max(1, handle.size_bytes)
        streamed = len(handle.streamed_units)
        location = handle.location.name
    manager.unload_all()
    return (
        f"forced budget {limit_gb:g} GB: {seconds:.3f} s/step, {resident:.0%} of the weights resident, "
        f"{streamed} layers streamed, location {location}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--steps", type=int, default=20, help="sampling steps for the seconds-per-image figure"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vram-limit-gb", type=float, default=3.0)
    parser.add_argument(
        "--tiny", action="store_true", help="tiny configs at 64 px: check the script anywhere"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 convolutions are not what a CPU run measures
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {name}, dtype {dtype}, {args.steps} steps per image")
    rows = []
    with torch.inference_mode():
        for model in args.models:
            make_config, size = (TINY if args.tiny else MODELS)[model]
            cfg = make_config()
            ours, ref = unet_pair(cfg, device, dtype)
            run_ours, run_ref = step_functions(cfg, size, ours, ref, device)
            step = interleave({"ours": run_ours, "diffusers": run_ref}, args.repeats, device)
            memory = (peak_mib(run_ours, device), peak_mib(run_ref, device))
            diff = (run_ours().float() - run_ref().float()).abs().max().item() if model == "sd15" else None
            vae_ours, vae_ref = vae_times(size, device, dtype, max(2, args.repeats // 2), args.tiny)
            del ref
            budget = forced_budget_step(ours, run_ours, device, args.vram_limit_gb)
            rows.append((model, size, step, memory, diff, vae_ours, vae_ref, budget))
            del ours, run_ours, run_ref
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(
        f"{'model':>6} {'size':>5} {'side':>9} {'s/step':>8} {'it/s':>6} {'VAE s':>6} {'s/image':>8} {'peak MiB':>9}"
    )
    for model, size, step, memory, diff, vae_ours, vae_ref, budget in rows:
        for side, seconds, vae, mem in (
            ("diffgraph", step["ours"], vae_ours, memory[0]),
            ("diffusers", step["diffusers"], vae_ref, memory[1]),
        ):
            mem_s = f"{mem:9.0f}" if mem is not None else f"{'-':>9}"
            per_image = args.steps * seconds + vae
            print(
                f"{model:>6} {size:>5} {side:>9} {seconds:8.3f} {1 / seconds:6.2f} {vae:6.3f} {per_image:8.2f} {mem_s}"
            )
        ratio = step["ours"] / step["diffusers"]
        diff_s = f"{diff:.2e}" if diff is not None else "not compared"
        print(
            f"{'':>6} ratio ours/diffusers step {ratio:.3f}, VAE {vae_ours / vae_ref:.3f}; max|diff| {diff_s}"
        )
        print(f"{'':>6} {budget}")


if __name__ == "__main__":
    main()
