"""Start-up time: `diffgraph serve` launched as a subprocess until its first /object_info answer.

Each run gets a fresh temporary base directory (empty models/ and custom_nodes/ folders) and a free
loopback port; the clock starts just before the process is spawned and stops when GET /object_info
answers 200 with a JSON body. Prints every run and the median (issue 20's target: median of 5 < 2 s;
ComfyUI took 7.4 s on this machine kind).

A second measurement runs `diffgraph serve --quick-test-for-ci` (ComfyUI has a flag of that name): the
server starts as usual on a free loopback port, answers one /object_info, stops and exits, so the time is
a whole server life without polling from outside. `python -c 'import torch'` is timed alongside: the
floor that no lazy import removes. Each row also gives the child's CPU seconds, which a busy machine
changes less than the wall clock. Where PYTHONDONTWRITEBYTECODE is set, every row is also measured
with a bytecode cache (see `environments`).

With `--comfy DIR` (a ComfyUI checkout whose `../venv` holds its environment, e.g. /work/comfy_ref/ComfyUI)
ComfyUI's `main.py --cpu` is timed the same way in the same run, interleaved, for a ratio.

    .venv/bin/python benchmarks/startup.py [--runs 5] [--custom-nodes DIR] [--comfy DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    """Whether `url` answers 200 with a JSON object (the server is up and has its node schema)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200 and isinstance(json.loads(response.read()), dict)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


def diffgraph_command(base: Path, port: int, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "engine.cli",
        "serve",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--log-level",
        "WARNING",
        *extra,
    ]


def comfy_command(comfy: Path, base: Path, port: int) -> list[str]:
    python = comfy.parent / "venv" / "bin" / "python"
    return [
        str(python),
        str(comfy / "main.py"),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
    ]


def prepare_base(custom_nodes: Path | None) -> Path:
    base = Path(tempfile.mkdtemp(prefix="diffgraph-startup-"))
    (base / "models").mkdir()
    if custom_nodes is not None:  # linked, not copied: the packs are read, never written
        (base / "custom_nodes").symlink_to(custom_nodes.resolve(), target_is_directory=True)
    else:
        (base / "custom_nodes").mkdir()
    return base


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system seconds of the whole child process (load on the machine barely moves it)
    second_request_ms: float | None = None  # a warm /object_info, once the server is up


def time_server(
    command: Callable[[Path, int], list[str]],
    custom_nodes: Path | None,
    env: dict[str, str],
    repo: Path = REPO,
) -> Run:
    """Seconds from spawning the server to its first /object_info answer; the server is then stopped."""
    base = prepare_base(custom_nodes)
    port = free_port()
    url = f"http://127.0.0.1:{port}/object_info"
    log = open(base / "server.log", "wb")  # noqa: SIM115 - closed in finally
    cpu_before = children_cpu()
    started = time.perf_counter()
    process = subprocess.Popen(command(base, port), cwd=repo, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        while not answers(url):
            if process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {process.returncode}: {(base / 'server.log').read_text()}"
                )
            if time.perf_counter() - started > TIMEOUT_S:
                raise RuntimeError(
                    f"no /object_info answer after {TIMEOUT_S} s: {(base / 'server.log').read_text()}"
                )
            time.sleep(0.02)
        wall = time.perf_counter() - started
        again = time.perf_counter()
        answers(url)
        second_ms = (time.perf_counter() - again) * 1000
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
    return Run(wall, children_cpu() - cpu_before, second_ms)


def time_quick_test(custom_nodes: Path | None, env: dict[str, str], repo: Path = REPO) -> Run:
    """`diffgraph serve --quick-test-for-ci`: build the runtime, start, answer once, stop, exit."""
    base = prepare_base(custom_nodes)
    try:
        cpu_before = children_cpu()
        started = time.perf_counter()
        subprocess.run(
            diffgraph_command(base, free_port(), ["--quick-test-for-ci"]),
            cwd=repo,
            check=True,
            capture_output=True,
            timeout=TIMEOUT_S,
            env=env,
        )
        return Run(time.perf_counter() - started, children_cpu() - cpu_before)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def time_import_torch(env: dict[str, str], code: str = "import torch") -> Run:
    """A fresh interpreter's `import torch`: the floor no lazy import can remove (with the cyclic collector
    paused, as `diffgraph serve` pauses it for its start-up, the floor is lower)."""
    cpu_before = children_cpu()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT_S, env=env)
    return Run(time.perf_counter() - started, children_cpu() - cpu_before)


def environments(pycache: Path) -> dict[str, dict[str, str]]:
    """The environment as it is, and one with a bytecode cache: where PYTHONDONTWRITEBYTECODE is set (as
    on these machines) the project's ~300 modules are compiled from source on every start, which an
    installed program (pip writes .pyc files) never does. The cache lives in a temporary folder
    (PYTHONPYCACHEPREFIX), so nothing is written into the source tree."""
    plain = dict(os.environ)
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(pycache)
    return {"": plain, " (bytecode cache)": cached}


def row(name: str, runs: list[Run]) -> str:
    wall = [r.wall_s for r in runs]
    cpu = statistics.median(r.cpu_s for r in runs)
    text = f"{name:<52} {statistics.median(wall):6.2f} s  CPU {cpu:5.2f} s  runs: " + " ".join(
        f"{t:.2f}" for t in wall
    )
    warm = [r.second_request_ms for r in runs if r.second_request_ms is not None]
    return text + (f"  (warm /object_info {statistics.median(warm):.0f} ms)" if warm else "")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--custom-nodes", type=Path, help="a custom_nodes folder to load (linked into each base)"
    )
    parser.add_argument("--comfy", type=Path, help="a ComfyUI checkout to time the same way (its ../venv)")
    parser.add_argument("--no-bytecode-cache-row", action="store_true", help="only the environment as it is")
    parser.add_argument(
        "--repo",
        type=Path,
        default=REPO,
        help="the diffgraph checkout to start (default: this one; e.g. an older tree unpacked with git archive)",
    )
    parser.add_argument("--skip-quick-test", action="store_true", help="for checkouts without the flag")
    args = parser.parse_args()
    results: dict[str, list[Run]] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="diffgraph-pycache-") as pycache:
        envs = environments(Path(pycache))
        if args.no_bytecode_cache_row:
            envs = {"": envs[""]}
        if not os.environ.get("PYTHONDONTWRITEBYTECODE"):  # .pyc files are written and used anyway
            envs = {"": envs[""]}
        if len(envs) > 1:  # fills the bytecode cache; not counted
            warm_up = partial(diffgraph_command, extra=[])
            time_server(warm_up, args.custom_nodes, envs[" (bytecode cache)"], args.repo)
        for _ in range(args.runs):  # interleaved, so a busy moment on the machine hits every row alike
            for suffix, env in envs.items():
                results.setdefault("python -c 'import torch'" + suffix, []).append(time_import_torch(env))
                results.setdefault("  the same, collector paused" + suffix, []).append(
                    time_import_torch(env, "import gc; gc.disable(); import torch")
                )
                results.setdefault("diffgraph serve -> /object_info" + suffix, []).append(
                    time_server(partial(diffgraph_command, extra=[]), args.custom_nodes, env, args.repo)
                )
                if not args.skip_quick_test:
                    results.setdefault("diffgraph serve --quick-test-for-ci" + suffix, []).append(
                        time_quick_test(args.custom_nodes, env, args.repo)
                    )
            if args.comfy:
                results.setdefault("ComfyUI main.py --cpu -> /object_info", []).append(
                    time_server(partial(comfy_command, args.comfy.resolve()), None, envs[""])
                )
    print(
        f"start-up, median of {args.runs} runs, {os.cpu_count()} CPU(s), load average {load_before:.1f} -> ",
        end="",
    )
    print(f"{os.getloadavg()[0]:.1f} (other work on the machine inflates the wall-clock figures)")
    for name, runs in results.items():
        print(row(name, runs))
    if args.comfy:
        ours = statistics.median(r.wall_s for r in results["diffgraph serve -> /object_info"])
        theirs = statistics.median(r.wall_s for r in results["ComfyUI main.py --cpu -> /object_info"])
        print(f"diffgraph / ComfyUI (wall): {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
