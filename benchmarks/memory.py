"""Model switching through the ModelManager: two full-size SD1.5-architecture UNets, A -> B -> A -> B -> A.

Writes two random-weight SD1.5 checkpoints once (fp16, ~2.1 GB each; cached under
~/.cache/diffgraph-bench/ or $DIFFGRAPH_BENCH_CACHE), then measures in a fresh child process (so that peak
RSS is this scenario's alone):

  cached  - device holds one UNet, RAM budget holds one offloaded UNet: the first A and B loads read their
            file, every later switch is served from the manager's RAM cache;
  dropped - RAM budget 0: every switch drops the other model and re-reads the file (no cache).

The device is chosen like the app does (CUDA, MPS, else CPU). On the CPU the compute device *is* RAM, so
a cached switch costs only the manager's bookkeeping (and patch handling); on a GPU it includes the
host-to-device copy. The device budget is set to one UNet so that switching has to evict.

Run:  .venv/bin/python benchmarks/memory.py [--cache DIR] [--scenario cached|dropped|both]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."


def cache_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("DIFFGRAPH_BENCH_CACHE") or Path.home() / ".cache" / "diffgraph-bench")


def ensure_checkpoints(folder: Path) -> dict[str, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not installed
    from tests.factories.checkpoints import write_full_size_sd15

    paths = {}
    for name, seed in (("A", 0), ("B", 1)):
        path = folder / f"sd15_random_{name.lower()}_fp16.safetensors"
        if not path.exists():
            t0 = time.perf_counter()
            write_full_size_sd15(path, dtype=torch.float16, seed=seed)
            print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s")
        paths[name] = path
    return paths


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def run_child(paths: dict[str, Path], scenario: str) -> dict[str, object]:
    from engine.diffusion.checkpoints.io import read_state_dict
    from engine.diffusion.models.unet import UNetConfig, UNetModel
    from engine.memory.casting import module_bytes
    from engine.memory.devices import MemoryOptions, select_device
    from engine.memory.manager import ModelManager

    info = select_device(MemoryOptions())
    reads: list[str] = []

    def loader(name: str):
        def read() -> dict[str, torch.Tensor]:
            reads.append(name)
            sd = read_state_dict(
                paths[name], dtype=torch.float16, keys_filter=lambda k: k.startswith(UNET_PREFIX)
            )
            return {k[len(UNET_PREFIX) :]: v for k, v in sd.items()}

        return read

    models = {n: UNetModel(UNetConfig.sd15(), dtype=torch.float16, device="meta").eval() for n in "AB"}
    size = module_bytes(models["A"])
    manager = ModelManager(
        info,
        device_budget_bytes=size + 64 * 1024**2,  # one UNet (+ slack): switching must evict
        ram_budget_bytes=size if scenario == "cached" else 0,
    )
    handles = {n: manager.register(m, name=n, loader=loader(n)) for n, m in models.items()}
    steps = []
    for name in "ABABA":
        before = len(reads)
        t0 = time.perf_counter()
        manager.load(handles[name])
        if info.compute_device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        source = "file" if len(reads) > before else "RAM cache"
        steps.append({"model": name, "seconds": dt, "source": source, "rss": rss_bytes()})
    checksum = float(next(handles["A"].module.parameters()).float().sum())
    del handles, models, manager
    gc.collect()
    return {
        "scenario": scenario,
        "device": info.name,
        "unet_bytes": size,
        "steps": steps,
        "peak_rss": peak_rss_bytes(),
        "checksum": checksum,
    }


def report(result: dict[str, object]) -> None:
    steps = result["steps"]
    assert isinstance(steps, list)
    print(
        f"\nscenario {result['scenario']!r} on {result['device']}, "
        f"UNet {int(result['unet_bytes']) / 1e9:.2f} GB (fp16)"  # type: ignore[call-overload]
    )
    print(f"{'step':>4}  {'model':>5}  {'source':>10}  {'seconds':>9}  {'RSS GB':>7}")
    for i, s in enumerate(steps, 1):
        print(f"{i:>4}  {s['model']:>5}  {s['source']:>10}  {s['seconds']:>9.4f}  {s['rss'] / 1e9:>7.2f}")
    cold_a, second_a = steps[0]["seconds"], steps[2]["seconds"]
    print(
        f"cold A {cold_a:.3f} s, second A {second_a:.4f} s ({steps[2]['source']}): ratio {cold_a / second_a:.1f}x"
    )
    print(f"peak RSS {int(result['peak_rss']) / 1e9:.2f} GB")  # type: ignore[call-overload]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="folder for the two benchmark checkpoints")
    parser.add_argument("--scenario", choices=["cached", "dropped", "both"], default="both")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print raw results as JSON too")
    args = parser.parse_args()
    folder = cache_dir(args.cache)
    if args.child:
        paths = {
            "A": folder / "sd15_random_a_fp16.safetensors",
            "B": folder / "sd15_random_b_fp16.safetensors",
        }
        print(json.dumps(run_child(paths, args.scenario)))
        return
    ensure_checkpoints(folder)
    scenarios = ["cached", "dropped"] if args.scenario == "both" else [args.scenario]
    for scenario in scenarios:
        cmd = [sys.executable, __file__, "--child", "--scenario", scenario, "--cache", str(folder)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        report(result)
        if args.json:
            print(json.dumps(result))


if __name__ == "__main__":
    main()
