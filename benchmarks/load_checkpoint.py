"""Checkpoint load time and peak memory for a full-size SD1.5-architecture file.

Builds once (cached outside the repo) a ~2 GB SD1.5 checkpoint with random fp16 weights, then runs
each measurement in a fresh subprocess:

* ``read``: read every byte of the file once into a reused buffer (the I/O floor);
* ``read_fresh``: read the file once into freshly allocated memory of its size (what any loader that
  keeps the weights resident pays: the I/O plus faulting in new pages);
* ``fp16`` / ``fp32``: ``load_checkpoint`` of UNet + VAE + text encoder into that dtype.

Peak RSS is the child's ``ru_maxrss`` minus its resident size after imports, compared with
the bytes of the loaded weights. Target: peak <= 1.25 x loaded weights.

    python benchmarks/load_checkpoint.py [--cache-dir DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("DIFFGRAPH_BENCH_CACHE", Path.home() / ".cache" / "diffgraph-bench"))
FILE_NAME = "sd15_random_fp16.safetensors"


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _current_rss_bytes() -> int:
    # The high-water mark after imports can include transient allocations already freed, so the
    # baseline is the *current* resident size (VmRSS); the peak is ru_maxrss at the end.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return _maxrss_bytes()


def child(mode: str, path: str) -> None:
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401  (lazy modules)

    from engine.diffusion.checkpoints import loader  # noqa: F401  (imports counted in the baseline)
    from engine.diffusion.models import unet, vae  # noqa: F401
    from engine.diffusion.text import encoder  # noqa: F401

    base = _current_rss_bytes()
    t0 = time.perf_counter()
    loaded = 0
    if mode == "read":
        buf = bytearray(64 * 1024 * 1024)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                loaded += n
    elif mode == "read_fresh":
        target = torch.empty(os.path.getsize(path), dtype=torch.uint8)
        view = memoryview(target.numpy())
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view[loaded : loaded + 64 * 1024 * 1024]):
                loaded += n
    else:
        dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[mode]
        ck = loader.load_checkpoint(path, dtype=dtype)
        for m in (ck.unet, ck.vae, ck.text_encoder):
            loaded += sum(t.numel() * t.element_size() for t in m.state_dict().values())
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {"mode": mode, "seconds": elapsed, "peak_over_base": _maxrss_bytes() - base, "loaded": loaded}
        )
    )


def run_child(mode: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode (best time, worst memory kept)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    path = args.cache_dir / FILE_NAME
    if not path.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not installed
        from tests.factories.checkpoints import write_full_size_sd15

        print(f"building {path} (one time) ...", flush=True)
        t = time.perf_counter()
        write_full_size_sd15(path)
        print(f"  written in {time.perf_counter() - t:.1f} s", flush=True)
    size = path.stat().st_size
    print(f"file: {path} ({size / 2**30:.2f} GiB)")

    run_child("read", path)  # warm the page cache so that every mode reads from memory
    results: dict[str, dict[str, float]] = {}
    for mode in ("read", "read_fresh", "fp16", "fp32"):
        runs = [run_child(mode, path) for _ in range(max(1, args.repeat))]
        results[mode] = {
            "seconds": min(r["seconds"] for r in runs),
            "peak_over_base": max(r["peak_over_base"] for r in runs),
            "loaded": runs[0]["loaded"],
        }

    read_s = results["read"]["seconds"]
    fresh_s = results["read_fresh"]["seconds"]
    print()
    print(
        f"{'mode':<10} {'time s':>8} {'x read':>7} {'x fresh':>8} {'loaded GiB':>11} {'peak RSS GiB':>13} "
        f"{'peak/loaded':>12}"
    )
    for mode, r in results.items():
        loaded = r["loaded"]
        ratio = r["peak_over_base"] / loaded if mode not in ("read",) else float("nan")
        print(
            f"{mode:<10} {r['seconds']:>8.2f} {r['seconds'] / read_s:>7.2f} {r['seconds'] / fresh_s:>8.2f} "
            f"{loaded / 2**30:>11.3f} {r['peak_over_base'] / 2**30:>13.3f} {ratio:>12.3f}"
        )
    print("\ntarget: peak/loaded <= 1.25 (read: page-cache reads, not counted in RSS)")


if __name__ == "__main__":
    main()
