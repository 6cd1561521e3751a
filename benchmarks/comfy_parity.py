"""Parity table: the same API workflows through ComfyUI and diffgraph, pixel differences of the PNGs.

Needs a ComfyUI to compare against (CI never runs this; without one it says so and exits 0):

    .venv/bin/python benchmarks/comfy_parity.py --comfyui http://127.0.0.1:8189 \\
        --checkpoint /path/to/sd15.safetensors [--only euler dpmpp_2m/karras special] [--results R.jsonl]

``--comfyui`` is the URL of a running ComfyUI that sees the checkpoint under the same file name, or the
path of a ComfyUI checkout to start (``--comfy-python`` names its interpreter; the checkpoint's folder is
given to it as an extra model path). diffgraph runs in this process, through its runtime, with the
checkpoint's folder added to its ``checkpoints`` paths.

Cases: every sampler x scheduler pair both engines offer (from their KSampler choices) on ComfyUI's
default txt2img graph, plus img2img, SetLatentNoiseMask and VAEEncodeForInpaint inpainting, batches of 2
(an SDE and an ancestral sampler: per-item noise) and a hires fix; ``--workflow FILE`` adds API-format
workflows of your own. ``--only``/``--skip`` pick cases, ``--cross SCHEDULER`` runs the two axes instead of
the product (a full product is hours on two CPU cores), ``--control`` adds what a seed change does. Columns:
largest and mean absolute pixel difference in 1/255 steps; a case passes at max <= 2. ComfyUI's images are
kept in ``--ref-cache`` (keyed by the workflow) and finished rows in ``--results``, so an interrupted or
repeated run only does what is missing (``--rerun`` recomputes the diffgraph side).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PASS_LIMIT = 2.0  # largest allowed per-pixel difference, in 1/255 steps
INPUT_IMAGE = "parity_input.png"
SPECIAL = "special"


def node(class_type: str, **inputs: Any) -> dict:
    return {"class_type": class_type, "inputs": inputs}


# ComfyUI's default txt2img graph (API format), sizes and steps filled in per case.
TEMPLATE: dict[str, Any] = {
    "3": node(
        "KSampler", seed=42, steps=4, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=1.0,
        model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0],
    ),
    "4": node("CheckpointLoaderSimple", ckpt_name=""),
    "5": node("EmptyLatentImage", width=128, height=128, batch_size=1),
    "6": node("CLIPTextEncode", text="beautiful scenery nature glass bottle landscape", clip=["4", 1]),
    "7": node("CLIPTextEncode", text="text, watermark", clip=["4", 1]),
    "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
    "9": node("SaveImage", filename_prefix="parity", images=["8", 0]),
}  # fmt: skip


# ---- cases -----------------------------------------------------------------------------------------


def txt2img(ckpt: str, sampler: str, scheduler: str, size: int, steps: int, batch: int = 1) -> dict:
    wf = copy.deepcopy(TEMPLATE)
    wf["4"]["inputs"]["ckpt_name"] = ckpt
    wf["5"]["inputs"].update(width=size, height=size, batch_size=batch)
    wf["3"]["inputs"].update(sampler_name=sampler, scheduler=scheduler, steps=steps)
    return wf


def _from_input_image(wf: dict, latent: dict) -> dict:
    """Replace the empty latent by `latent` (a node reading node 10, the loaded input image)."""
    wf["10"] = node("LoadImage", image=INPUT_IMAGE)
    wf["5"] = latent
    return wf


def special_cases(ckpt: str, size: int, steps: int) -> dict[str, dict]:
    vae_encode = node("VAEEncode", pixels=["10", 0], vae=["4", 2])
    img2img = _from_input_image(txt2img(ckpt, "euler", "normal", size, steps), vae_encode)
    img2img["3"]["inputs"]["denoise"] = 0.6

    noise_mask = _from_input_image(
        txt2img(ckpt, "euler", "normal", size, steps),
        node("SetLatentNoiseMask", samples=["11", 0], mask=["10", 1]),
    )
    noise_mask["11"] = vae_encode
    noise_mask["3"]["inputs"]["denoise"] = 0.8

    for_inpaint = _from_input_image(
        txt2img(ckpt, "euler", "normal", size, steps),
        node("VAEEncodeForInpaint", pixels=["10", 0], vae=["4", 2], mask=["10", 1], grow_mask_by=6),
    )

    hires = txt2img(ckpt, "euler", "normal", size, steps)
    big = size * 3 // 2 // 8 * 8
    hires["12"] = node(
        "LatentUpscale",
        samples=["3", 0],
        upscale_method="nearest-exact",
        width=big,
        height=big,
        crop="disabled",
    )
    hires["13"] = copy.deepcopy(hires["3"])
    hires["13"]["inputs"].update(latent_image=["12", 0], denoise=0.5, seed=43)
    hires["8"]["inputs"]["samples"] = ["13", 0]

    return {
        "img2img": img2img,
        "inpaint_set_latent_noise_mask": noise_mask,
        "inpaint_vae_encode_for_inpaint": for_inpaint,
        "batch2_dpmpp_2m_sde": txt2img(ckpt, "dpmpp_2m_sde", "karras", size, steps, batch=2),
        "batch2_euler_ancestral": txt2img(ckpt, "euler_ancestral", "normal", size, steps, batch=2),
        "hires_fix": hires,
    }


def input_image_png(size: int) -> bytes:
    """A deterministic RGBA test picture: smooth colour ramps, a transparent square (the inpaint mask)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6.0 * (x + y))], axis=-1)
    alpha = np.ones((size, size), np.float32)
    alpha[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0.0  # ComfyUI: mask = 1 - alpha
    pixels = (np.concatenate([rgb, alpha[..., None]], axis=-1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def uses_input_image(wf: dict) -> bool:
    return any(node["class_type"] == "LoadImage" for node in wf.values())


def with_checkpoint(wf: dict, ckpt: str) -> dict:
    wf = copy.deepcopy(wf)
    for node in wf.values():
        if node.get("class_type") == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = ckpt
    return wf


def sampler_of(wf: dict) -> str:
    return next((n["inputs"]["sampler_name"] for n in wf.values() if n["class_type"] == "KSampler"), "")


# ---- ComfyUI -----------------------------------------------------------------------------------------


class ComfyUI:
    """A ComfyUI server driven through its HTTP API (POST /prompt, GET /history/ID, GET /view)."""

    def __init__(self, url: str, timeout_s: float):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.client_id = uuid.uuid4().hex

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return response.read()

    def _post(self, path: str, body: bytes, content_type: str) -> Any:
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:2000].decode(errors="replace")
            raise RuntimeError(f"ComfyUI {path}: {exc.code} {detail}") from exc

    def ksampler_choices(self) -> tuple[list[str], list[str]]:
        required = json.loads(self._get("/object_info/KSampler"))["KSampler"]["input"]["required"]
        return required["sampler_name"][0], required["scheduler"][0]

    def checkpoints(self) -> list[str]:
        info = json.loads(self._get("/object_info/CheckpointLoaderSimple"))
        return info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]

    def upload(self, name: str, data: bytes) -> None:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        self._post("/upload/image", b"".join(parts), f"multipart/form-data; boundary={boundary}")

    def run(self, wf: dict) -> list[bytes]:
        body = json.dumps({"prompt": wf, "client_id": self.client_id}).encode()
        prompt_id = self._post("/prompt", body, "application/json")["prompt_id"]
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            entry = json.loads(self._get(f"/history/{prompt_id}")).get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise RuntimeError(f"ComfyUI failed: {json.dumps(status.get('messages'))[-2000:]}")
                images = [im for out in entry["outputs"].values() for im in out.get("images", [])]
                return [self._get("/view?" + urllib.parse.urlencode(im)) for im in images]
            time.sleep(0.5)
        raise TimeoutError(f"ComfyUI prompt {prompt_id} not finished after {self.timeout_s:.0f}s")


def start_comfyui(checkout: Path, python: str, ckpt_dir: Path, work: Path, port: int) -> subprocess.Popen:
    """Start a ComfyUI checkout on loopback with its own base directory under `work`."""
    base = work / "comfy_base"
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    config = work / "extra_model_paths.yaml"
    config.write_text(f"parity:\n  checkpoints: {ckpt_dir}\n")
    command = [python, "main.py", "--cpu", "--use-pytorch-cross-attention", "--listen", "127.0.0.1"]
    command += ["--port", str(port), "--base-directory", str(base), "--extra-model-paths-config", str(config)]
    log = open(work / "comfyui.log", "ab")  # noqa: SIM115 - the server writes to it until it is stopped
    return subprocess.Popen(command, cwd=checkout, stdout=log, stderr=subprocess.STDOUT)


def wait_for(url: str, process: subprocess.Popen | None, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {process.returncode} (see comfyui.log)")
        try:
            urllib.request.urlopen(url + "/object_info/KSampler", timeout=10).read()
            return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"ComfyUI at {url} did not answer within {timeout_s:.0f}s")


# ---- diffgraph ---------------------------------------------------------------------------------------


class Diffgraph:
    """diffgraph in this process: one runtime (models stay loaded between cases) in a scratch base folder."""

    def __init__(self, ckpt_dir: Path, work: Path):
        from engine.folders import Folders
        from engine.runtime import build_runtime

        folders = Folders.create(work / "diffgraph_base")
        folders.add_model_path("checkpoints", ckpt_dir, first=True)
        folders.create_directories()
        self.runtime = build_runtime(folders, load_custom_nodes=False)

    def ksampler_choices(self) -> tuple[list[str], list[str]]:
        required = self.runtime.registry.object_info()["KSampler"]["input"]["required"]
        return required["sampler_name"][0], required["scheduler"][0]

    def upload(self, name: str, data: bytes) -> None:
        (self.runtime.folders.input / name).write_bytes(data)

    def run(self, wf: dict) -> list[bytes]:
        from engine.graph.loading import workflow_from_document

        result = self.runtime.executor.run(workflow_from_document(copy.deepcopy(wf), self.runtime.registry))
        if not result.ok:
            raise RuntimeError("; ".join(str(e) for e in result.errors) or result.status)
        images = [im for ui in result.ui_outputs.values() for im in ui.get("images", [])]
        roots = self.runtime.folders.roots
        return [(roots(im["type"])[0] / im["subfolder"] / im["filename"]).read_bytes() for im in images]


# ---- comparison --------------------------------------------------------------------------------------


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def difference(ours: list[bytes], theirs: list[bytes]) -> tuple[float, float]:
    """(max, mean) absolute difference in 1/255 steps over all images of a case."""
    if len(ours) != len(theirs):
        raise RuntimeError(f"diffgraph gave {len(ours)} image(s), ComfyUI {len(theirs)}")
    diffs = []
    for a, b in zip(ours, theirs, strict=True):
        pa, pb = pixels(a), pixels(b)
        if pa.shape != pb.shape:
            raise RuntimeError(f"image sizes differ: {pa.shape} vs {pb.shape}")
        diffs.append(np.abs(pa - pb).astype(np.float64).ravel())
    flat = np.concatenate(diffs)
    return float(flat.max()), float(flat.mean())


def case_key(wf: dict, salt: str) -> str:
    return hashlib.sha256((salt + json.dumps(wf, sort_keys=True)).encode()).hexdigest()[:24]


def reference_images(comfy: ComfyUI, wf: dict, key: str, cache: Path) -> list[bytes]:
    """ComfyUI's PNGs for `wf`, from the cache folder when this exact workflow ran before."""
    folder = cache / key
    if folder.is_dir():
        return [p.read_bytes() for p in sorted(folder.glob("*.png"))]
    images = comfy.run(wf)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    for i, png in enumerate(images):
        (tmp / f"{i:03d}.png").write_bytes(png)
    os.replace(tmp, folder)
    return images


def matches(name: str, wf: dict, names: set[str]) -> bool:
    pair = "/" in name
    return name in names or (pair and sampler_of(wf) in names) or (not pair and SPECIAL in names)


def select(cases: dict[str, dict], only: list[str], skip: list[str]) -> dict[str, dict]:
    wanted, unwanted = set(only), set(skip)
    return {
        name: wf
        for name, wf in cases.items()
        if (not only or matches(name, wf, wanted)) and not matches(name, wf, unwanted)
    }


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['case']:<40} {'error':>8} {'':>8}  {'FAIL':<4}  {row['error'][:150]}"
    verdict = "pass" if row["max"] <= PASS_LIMIT else "FAIL"
    return f"{row['case']:<40} {row['max']:>8.0f} {row['mean']:>8.4f}  {verdict:<4}  {row['seconds']:.0f}s"


def table(rows: list[dict]) -> str:
    head = f"{'case':<40} {'max/255':>8} {'mean/255':>8}  pass  notes"
    passed = sum(1 for r in rows if "error" not in r and r["max"] <= PASS_LIMIT)
    return "\n".join([head, "-" * len(head)] + [format_row(r) for r in rows] + [f"{passed}/{len(rows)} pass"])


# ---- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI"), help="URL or checkout of a ComfyUI")
    p.add_argument("--comfy-python", default=sys.executable, help="its interpreter, to start a checkout")
    p.add_argument("--port", type=int, default=8199, help="its port, to start a checkout")
    p.add_argument("--checkpoint", type=Path, help="the .safetensors both engines load")
    p.add_argument("--workflow", type=Path, action="append", default=[], help="extra API-format workflow")
    p.add_argument("--only", nargs="+", default=[], help=f"case names, sampler names and/or '{SPECIAL}'")
    p.add_argument("--skip", nargs="+", default=[], help="case or sampler names to leave out")
    p.add_argument("--schedulers", nargs="+", default=[], help="restrict the sampler x scheduler pairs")
    p.add_argument("--cross", metavar="SCHEDULER", help="all samplers with SCHEDULER, euler with all")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "comfy_parity")
    p.add_argument("--ref-cache", type=Path, help="ComfyUI images by workflow (default WORK/reference)")
    p.add_argument("--results", type=Path, help="JSONL of finished rows; rows there are not run again")
    p.add_argument("--rerun", action="store_true", help="recompute rows already in --results")
    p.add_argument("--table", type=Path, help="also write the table to this file")
    p.add_argument("--control", action="store_true", help="also show what a seed change does in ComfyUI")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one ComfyUI prompt may take")
    return p.parse_args(argv)


def build_cases(args: argparse.Namespace, comfy: ComfyUI, ours: Diffgraph) -> dict[str, dict]:
    ckpt = args.checkpoint.name
    theirs_s, theirs_k = comfy.ksampler_choices()
    ours_s, ours_k = ours.ksampler_choices()
    samplers = [s for s in theirs_s if s in ours_s]
    schedulers = [k for k in theirs_k if k in ours_k and (not args.schedulers or k in args.schedulers)]
    print(f"samplers in both: {len(samplers)}; only ComfyUI: {sorted(set(theirs_s) - set(ours_s))}")
    print(f"schedulers in both: {schedulers}; only ComfyUI: {sorted(set(theirs_k) - set(ours_k))}")
    pairs = [(s, k) for s in samplers for k in schedulers]
    if args.cross:  # the sampler and the scheduler axes, not their product: far fewer runs
        pairs = [(s, args.cross) for s in samplers] + [("euler", k) for k in schedulers if k != args.cross]
    cases = {f"{s}/{k}": txt2img(ckpt, s, k, args.size, args.steps) for s, k in pairs}
    cases.update(special_cases(ckpt, args.size, args.steps))
    for path in args.workflow:
        cases[path.stem] = with_checkpoint(json.loads(path.read_text()), ckpt)
    return select(cases, args.only, args.skip)


def run_case(name: str, wf: dict, comfy: ComfyUI, ours: Diffgraph, cache: Path, salt: str) -> dict:
    started = time.perf_counter()
    try:
        theirs = reference_images(comfy, wf, case_key(wf, salt), cache)
        peak, mean = difference(ours.run(wf), theirs)
    except Exception as exc:  # a failing case is a row of the table, not the end of the run
        return {"case": name, "error": f"{type(exc).__name__}: {exc}".replace("\n", " ")}
    return {"case": name, "max": peak, "mean": mean, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.comfyui:
        print("comfy_parity: skipped, no ComfyUI given (--comfyui URL|CHECKOUT or $COMFYUI)")
        return 0
    if args.checkpoint is None or not args.checkpoint.is_file():
        print(f"comfy_parity: --checkpoint must name an existing file (got {args.checkpoint})")
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.ref_cache or args.work / "reference"
    cache.mkdir(parents=True, exist_ok=True)
    ckpt_dir = args.checkpoint.resolve().parent
    process = None
    url = args.comfyui
    if not url.startswith(("http://", "https://")):
        process = start_comfyui(Path(url), args.comfy_python, ckpt_dir, args.work, args.port)
        url = f"http://127.0.0.1:{args.port}"
    try:
        wait_for(url, process)
        comfy = ComfyUI(url, args.timeout)
        if args.checkpoint.name not in comfy.checkpoints():
            print(f"comfy_parity: ComfyUI does not list {args.checkpoint.name} among its checkpoints")
            return 2
        ours = Diffgraph(ckpt_dir, args.work)
        cases = build_cases(args, comfy, ours)
        if any(uses_input_image(wf) for wf in cases.values()):
            png = input_image_png(args.size)
            comfy.upload(INPUT_IMAGE, png)
            ours.upload(INPUT_IMAGE, png)
        return run_all(args, cases, comfy, ours, cache)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)


def run_all(
    args: argparse.Namespace, cases: dict[str, dict], comfy: ComfyUI, ours: Diffgraph, cache: Path
) -> int:
    stat = args.checkpoint.stat()
    salt = f"{args.checkpoint.name}:{stat.st_size}:{args.size}\n"  # the input image depends on the size
    done: dict[str, dict] = {}
    if args.results and args.results.exists() and not args.rerun:
        for line in args.results.read_text().splitlines():
            row = json.loads(line)
            if "error" not in row:
                done[row["case"]] = row
    rows = []
    for i, (name, wf) in enumerate(cases.items(), 1):
        row = done.get(name) or run_case(name, wf, comfy, ours, cache, salt)
        if name not in done and args.results:
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"[{i}/{len(cases)}] {format_row(row)}", flush=True)
    text = table(rows)
    if args.control:  # how far a different seed moves the image: the scale the differences above live on
        a = txt2img(args.checkpoint.name, "euler", "normal", args.size, args.steps)
        b = copy.deepcopy(a)
        b["3"]["inputs"]["seed"] += 1
        peak, mean = difference(*(reference_images(comfy, wf, case_key(wf, salt), cache) for wf in (a, b)))
        text += f"\ncontrol: ComfyUI euler/normal, seed 42 vs 43: max {peak:.0f}, mean {mean:.4f} (/255)"
    print("\n" + text)
    if args.table:
        args.table.write_text(text + "\n")
    return 0 if all("error" not in r and r["max"] <= PASS_LIMIT for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
