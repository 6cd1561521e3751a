"""LoRA training speed and memory: ours vs a plain diffusers + PEFT loop, same configuration, one run.

Both sides train a rank-16 LoRA (alpha 16) on a full-size SD1.5-shaped UNet with random weights built
from its config (no downloads): the same layers (every Linear/Conv2d of the down, mid and up blocks:
attention q/k/v/out, feed-forward, proj_in/out, ResBlock convs and time projections, samplers), batch 1 at
256x256 pixels (32x32 latents) with a 77x768 text context, fp32, AdamW, MSE on the eps target, gradient
checkpointing on (both sides' own mechanism), one thread count for both.

The random weights are written once to a temporary file (kept for later runs, ``--weights``) which both
workers memory-map, so the frozen base weights use the machine's memory once (each worker's RSS still
counts the mapped pages, alike for both). Each side runs in its own worker process, so its peak RSS
(VmHWM) is its own; the parent interleaves the steps (ours, theirs, ours, ...) so machine load hits both
alike, and prints the median step time, steps/s, the peak RSS after building the UNet and after
training, and the ratio ours/theirs (time: <= 1.0 is the goal).

    .venv/bin/python benchmarks/lora_train.py [--steps 4] [--warmup 1] [--no-checkpointing] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RANK = 16
LATENT = 32


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(torch: Any) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, LATENT, LATENT, generator=g), torch.randn(1, 77, 768, generator=g)


def _weights(path: Path) -> dict[str, Any]:
    """The UNet weights of the benchmark file, memory-mapped (both workers share the pages)."""
    from engine.diffusion.checkpoints.io import read_state_dict
    from engine.diffusion.checkpoints.spec import UNET_PREFIX

    sd = read_state_dict(path, keys_filter=lambda k: k.startswith(UNET_PREFIX), mmap=True)
    return {k[len(UNET_PREFIX) :]: v for k, v in sd.items()}


def _ours(path: Path, checkpointing: bool) -> Any:
    import torch

    from engine.diffusion.models.unet import UNetConfig, UNetModel
    from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
    from engine.kernels.layers import use_fast_kernels
    from engine.training.adapters import create_adapters
    from engine.training.loop import TrainConfig, Trainer, TrainingData

    with torch.device("meta"):
        unet = UNetModel(UNetConfig.sd15())
    unet.load_state_dict(_weights(path), assign=True)
    unet.eval()
    # What the model manager does to every model it registers (the TrainLoraNode's MODEL is one):
    # engine.kernels' CPU fast paths for the Linear/Conv2d layers.
    use_fast_kernels(unet)
    latents, context = _inputs(torch)
    adapters = create_adapters(unet, "LoRA", RANK, alpha=RANK)
    config = TrainConfig(learning_rate=1e-4, gradient_checkpointing=checkpointing)
    trainer = Trainer(unet, ModelSamplingDiscrete(), TrainingData(latents, [context]), adapters, config)
    session = trainer.session()
    session.__enter__()  # the worker keeps `session` referenced (a collected one would end the run)
    return trainer.step, sum(p.numel() for p in adapters.parameters()), session


def _diffusers_targets() -> list[str]:
    """Our adapted layers under their diffusers module names."""
    import torch

    from engine.diffusion.models.unet import UNetConfig, UNetModel
    from engine.training.adapters import target_modules
    from engine.training.kohya import diffusers_modules

    with torch.device("meta"):
        unet = UNetModel(UNetConfig.sd15())
    names = diffusers_modules(unet)
    return [names[m] for m in target_modules(unet)]


def _theirs(path: Path, checkpointing: bool) -> Any:
    import diffusers
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig

    from engine.diffusion.models.unet import UNetConfig
    from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
    from engine.training.loop import noised_input_and_target
    from tests.factories.checkpoints import diffusers_unet_config

    targets = _diffusers_targets()
    config = {k: v for k, v in diffusers_unet_config(UNetConfig.sd15()).items() if not k.startswith("_")}
    from engine.diffusion.checkpoints.diffusers_layout import unet_original_to_diffusers

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**config)
    unet.load_state_dict(unet_original_to_diffusers(_weights(path)), assign=True, strict=True)
    unet.eval()
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=targets)
    )
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    latents, context = _inputs(torch)
    sampling = ModelSamplingDiscrete()
    g = torch.Generator().manual_seed(0)

    def step() -> float:
        t = torch.randint(0, 1000, (1,), generator=g).float()
        noise = torch.randn(latents.shape, generator=g)
        net_in, timestep, target = noised_input_and_target(sampling, latents, noise, t)
        loss = F.mse_loss(unet(net_in, timestep, encoder_hidden_states=context).sample.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, sum(p.numel() for p in params), None


def worker(side: str, path: Path, checkpointing: bool, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))
    step, trainable, _session = (_ours if side == "ours" else _theirs)(path, checkpointing)
    print(json.dumps({"ready": True, "rss_built_mb": _peak_rss_mb(), "trainable": trainable}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        loss = step()
        print(json.dumps({"seconds": time.perf_counter() - start, "loss": loss}), flush=True)
    print(json.dumps({"peak_rss_mb": _peak_rss_mb()}), flush=True)


class Side:
    def __init__(self, name: str, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--worker", name, "--weights", str(args.weights)]
        cmd += ["--no-checkpointing"] if not args.checkpointing else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.ready = self._read()
        self.times: list[float] = []

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker died (exit {self.proc.wait()})")
        return dict(json.loads(line))

    def step(self, record: bool) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        result = self._read()
        if record:
            self.times.append(result["seconds"])

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        result = self._read()
        self.proc.wait()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--worker", choices=["ours", "diffusers"])
    parser.add_argument(
        "--weights", type=Path, default=Path(tempfile.gettempdir()) / "diffgraph_lora_bench_sd15.safetensors"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.weights, args.checkpointing, args.threads or None)
        return
    if not args.weights.exists():
        sys.path.insert(0, str(REPO))
        import torch

        from tests.factories.checkpoints import write_full_size_sd15

        print(f"writing random SD1.5 weights (fp32) to {args.weights} ...", flush=True)
        write_full_size_sd15(args.weights, dtype=torch.float32)
    sides = [Side("ours", args), Side("diffusers", args)]
    for i in range(args.warmup + args.steps):
        for side in sides if i % 2 == 0 else reversed(sides):
            side.step(record=i >= args.warmup)
    finals = [side.finish() for side in sides]
    print(f"LoRA rank {RANK} training, SD1.5 UNet, 256x256 (latent {LATENT}x{LATENT}), batch 1, fp32, "
          f"gradient checkpointing {'on' if args.checkpointing else 'off'}, {args.steps} timed steps")  # fmt: skip
    print(
        f"{'':10} {'median s/step':>14} {'steps/s':>8} {'RSS built MB':>13} {'peak RSS MB':>12} {'trainable':>10}"
    )
    medians = []
    for side, final in zip(sides, finals, strict=True):
        median = statistics.median(side.times)
        medians.append((median, final["peak_rss_mb"]))
        print(f"{side.name:10} {median:14.2f} {1 / median:8.3f} {side.ready['rss_built_mb']:13.0f} "
              f"{final['peak_rss_mb']:12.0f} {side.ready['trainable']:10d}")  # fmt: skip
    (ours_t, ours_m), (their_t, their_m) = medians
    print(f"ratio ours/diffusers: time {ours_t / their_t:.2f}, peak RSS {ours_m / their_m:.2f}")


if __name__ == "__main__":
    main()
