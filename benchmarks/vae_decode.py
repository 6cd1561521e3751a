"""VAE decode speed: the SD VAE (kl-f8, random weights) ours vs diffusers' AutoencoderKL, one process.

Both decode the same raw latent with the same weights (diffusers loads ours through its own single-file
conversion), runs interleaved so machine noise hits both alike; prints the median seconds per decode at
each size, the ratio and the largest pixel difference. Ours runs as the model manager runs it (engine.kernels'
CPU fast paths switched on by `use_fast_kernels`, as at registration).

    .venv/bin/python benchmarks/vae_decode.py [--sizes 32 64] [--repeats 3]

Target (issue 20): VAE decode at least as fast as diffusers' (ratio <= 1.0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not installed

from engine.diffusion.models.vae import AutoencoderKL, VAEConfig  # noqa: E402
from engine.kernels import cpu_gemm  # noqa: E402
from engine.kernels.layers import use_fast_kernels  # noqa: E402
from tests.factories.checkpoints import diffusers_vae_config  # noqa: E402
from tests.factories.random_weights import randomize_  # noqa: E402

PREFIX = "first_stage_model."


def build_pair() -> tuple[AutoencoderKL, torch.nn.Module]:
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = VAEConfig.sd()
    ours = AutoencoderKL(cfg).eval()
    randomize_(ours, 0)  # unit-scale random weights: activations stay finite through 4 levels
    config = {k: v for k, v in diffusers_vae_config(cfg).items() if not k.startswith("_")}
    checkpoint = {PREFIX + k: v.contiguous() for k, v in ours.state_dict().items()}
    ref = diffusers.AutoencoderKL(**config).eval()
    missing, unexpected = ref.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"diffusers conversion mismatch: {missing[:3]} {unexpected[:3]}")
    use_fast_kernels(ours)
    return ours, ref


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="latent sides (pixels / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, our GEMM library {cpu_gemm.backend()}"
    )
    ours, ref = build_pair()
    print(f"{'image':>9} {'ours s':>8} {'diff. s':>8} {'ratio':>6} {'max|diff|':>10}")
    with torch.inference_mode():
        for side in args.sizes:
            z = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(side))
            a, b = ours.decode(z), ref.decode(z).sample  # warm-up (and the packed weights for this size)
            times: dict[str, list[float]] = {"ours": [], "diffusers": []}
            for _ in range(args.repeats):
                for name, fn in (
                    ("ours", lambda z=z: ours.decode(z)),
                    ("diffusers", lambda z=z: ref.decode(z).sample),
                ):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            t_ours, t_ref = statistics.median(times["ours"]), statistics.median(times["diffusers"])
            diff = (a - b).abs().max().item()
            print(
                f"{side * 8:>4}x{side * 8:<4} {t_ours:8.3f} {t_ref:8.3f} {t_ours / t_ref:6.3f} {diff:10.2e}"
            )


if __name__ == "__main__":
    main()
