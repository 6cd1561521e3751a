"""The ComfyUI side of benchmarks/custom_node_packs.py: what ComfyUI itself registers and computes.

Run with a ComfyUI checkout's own interpreter (it imports ComfyUI, so never with diffgraph's venv):

    COMFY=/path/to/ComfyUI
    $COMFY/../venv/bin/python benchmarks/comfy_pack_reference.py --comfyui $COMFY PACKS_DIR --json REF.json \\
        [--object-info INFO.json] [--workflows DIR --save-outputs OUT_DIR] [--input-directory DIR]
        [--models-directory DIR]

It links every pack of PACKS_DIR into ``<work>/custom_nodes`` (``--work``, default a temp dir, is given to
ComfyUI as its base directory), runs ComfyUI's start-up and node loading in this process (no HTTP
listener) and writes ``REF.json``: ``{"comfyui_version", "packs": {name: {"nodes": [...],
"registered_unusable": {...}, "declared", "error"}}}``. ``nodes`` are the node types a client can use:
ComfyUI keeps a node whose INPUT_TYPES/schema raises in NODE_CLASS_MAPPINGS but leaves it out of
/object_info, so those are listed apart. ``--object-info`` dumps the packs' node definitions.

With ``--workflows DIR``, each ``DIR/<pack>.json`` (API format) runs through ComfyUI's PromptExecutor and
``OUT_DIR/<pack>.pt`` gets every executed node's outputs (``{node_id: [[value, ...] per output]}``,
tensors on the CPU, strings and numbers as they are, other objects as ``repr``): the format
``custom_node_packs.py --compare OUT_DIR`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any


class Collect(logging.Handler):
    """ComfyUI reports pack import failures only through logging."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a bad log record must not stop the count
            self.records.append((record.levelname, record.getMessage()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packs_dir", type=Path)
    parser.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI checkout to import")
    parser.add_argument("--json", type=Path, required=True, help="where the per-pack registrations go")
    parser.add_argument("--object-info", type=Path, help="dump the packs' node definitions here")
    parser.add_argument("--workflows", type=Path, help="folder of API workflows named <pack>.json")
    parser.add_argument("--save-outputs", type=Path, help="folder for <pack>.pt node outputs")
    parser.add_argument("--work", type=Path, help="ComfyUI base directory (default: a temp dir)")
    parser.add_argument("--models-directory", type=Path, help="a models root ComfyUI should also search")
    parser.add_argument("--input-directory", type=Path, help="ComfyUI's input folder (the workflows' images)")
    return parser.parse_args(argv)


def link_packs(packs_dir: Path, custom: Path) -> list[str]:
    custom.mkdir(parents=True, exist_ok=True)
    for entry in custom.iterdir():
        if entry.is_symlink():
            entry.unlink()
    packs = sorted(p.name for p in packs_dir.iterdir() if (p / "__init__.py").is_file())
    for name in packs:
        (custom / name).symlink_to(packs_dir.resolve() / name)
    return packs


def start_comfyui(args: argparse.Namespace, work: Path, collect: Collect) -> Any:
    """Import ComfyUI as main.py would (prestartup scripts included) and load every node; the nodes module."""
    sys.argv = ["main.py", "--cpu", "--use-pytorch-cross-attention", "--base-directory", str(work),
                "--disable-api-nodes", "--disable-auto-launch"]  # fmt: skip
    if args.input_directory:
        sys.argv += ["--input-directory", str(args.input_directory.resolve())]
    if args.models_directory:
        extra = work / "extra_model_paths.yaml"
        kinds = ("checkpoints", "unet", "diffusion_models", "vae", "loras", "clip", "text_encoders",
                 "controlnet", "upscale_models", "embeddings", "clip_vision")  # fmt: skip
        lines = ["packs_benchmark:", f"  base_path: {args.models_directory.resolve()}"]
        lines += [f"  {kind}: {kind}" for kind in kinds]
        extra.write_text("\n".join(lines) + "\n")
        sys.argv += ["--extra-model-paths-config", str(extra)]
    sys.path.insert(0, str(args.comfyui.resolve()))
    os.chdir(args.comfyui.resolve())
    import main  # noqa: F401 - ComfyUI's start-up code up to the server

    logging.getLogger().addHandler(collect)
    import server

    # ComfyUI's own `nodes` module (this script runs in ComfyUI's process): by name, as the layer test
    # keeps `import nodes` statements out of the repository (there `nodes` is the env module's name).
    nodes = importlib.import_module("nodes")

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server.PromptServer(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return nodes


def pack_entry(nodes: Any, custom: Path, name: str, collect: Collect, builtin: set[str]) -> dict[str, Any]:
    module = sys.modules.get(str(custom / name).replace(".", "_x_"))
    registered = sorted(
        n
        for n, c in nodes.NODE_CLASS_MAPPINGS.items()
        if getattr(c, "RELATIVE_PYTHON_MODULE", "") == f"custom_nodes.{name}"
    )
    unusable: dict[str, str] = {}
    for node_type in registered:  # what /object_info does for each node
        cls = nodes.NODE_CLASS_MAPPINGS[node_type]
        try:
            cls.INPUT_TYPES() if hasattr(cls, "INPUT_TYPES") else cls.GET_SCHEMA()
        except Exception as exc:  # noqa: BLE001
            unusable[node_type] = f"{type(exc).__name__}: {exc}"[:240]
    entry: dict[str, Any] = {
        "nodes": [n for n in registered if n not in unusable],
        "registered_unusable": unusable,
        "error": None,
    }
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if isinstance(mappings, dict):
        entry["declared"] = len(mappings)
        entry["shadowed_builtin"] = sorted(n for n in mappings if n in builtin)
    for _, message in collect.records:
        if f"custom_nodes/{name} module" in message or f"custom_nodes{os.sep}{name} module" in message:
            entry["error"] = message.strip().splitlines()[-1][:300]
    return entry


def node_info(cls: Any) -> dict[str, Any]:
    """The parts of ComfyUI's /object_info entry a workflow author needs (inputs, outputs)."""
    if hasattr(cls, "GET_NODE_INFO_V1"):  # V3 nodes describe themselves
        return cls.GET_NODE_INFO_V1()
    return {
        "input": cls.INPUT_TYPES(),
        "output": list(getattr(cls, "RETURN_TYPES", ())),
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or getattr(cls, "RETURN_TYPES", ())),
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [])),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "category": getattr(cls, "CATEGORY", ""),
    }


def object_info(nodes: Any, names: list[str]) -> dict[str, Any]:
    info = {}
    for name in names:
        try:
            info[name] = node_info(nodes.NODE_CLASS_MAPPINGS[name])
        except Exception as exc:  # noqa: BLE001
            info[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return json.loads(json.dumps(info, default=repr))


def plain(value: Any) -> Any:
    """An output value in a form both engines can save and compare (custom_node_packs.py uses this too):
    tensors, numbers, strings, LATENT dicts; anything else (models, pipes) as its type name, not compared."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return list(value)
    if isinstance(value, dict) and "samples" in value:  # LATENT
        return {k: plain(v) for k, v in value.items()}
    return f"<{type(value).__name__}>"


def run_workflow(path: Path, out: Path) -> str:
    import execution
    import server
    import torch

    prompt = json.loads(path.read_text())
    prompt_id = uuid.uuid4().hex
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        return f"invalid: {valid[1]} {json.dumps(valid[3])[:300]}"
    # ComfyUI runs the outputs that validate and drops the others: say which were dropped.
    dropped = sorted(valid[3]) if valid[3] else []
    executor = execution.PromptExecutor(server.PromptServer.instance)
    executor.execute(prompt, prompt_id, {}, valid[2])
    saved = {}
    for node_id in prompt:
        entry = executor.caches.outputs.get(node_id)
        data = getattr(entry, "outputs", entry)
        if data is not None:
            saved[node_id] = [[plain(v) for v in output] for output in data]
    torch.save(saved, out)
    if not executor.success:
        errors = [m for e, m in executor.status_messages if e == "execution_error"]
        if not errors:
            return "failed: ?"
        first = errors[0]
        return f"failed: node {first.get('node_id')} ({first.get('node_type')}): {first.get('exception_message', '')[:200]}"
    return f"ok, but not run (invalid): {', '.join(dropped)}" if dropped else "ok"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="comfy-packs-"))
    custom = work.resolve() / "custom_nodes"
    packs = link_packs(args.packs_dir, custom)
    collect = Collect()
    started = time.time()
    nodes = start_comfyui(args, work.resolve(), collect)
    import comfyui_version

    builtin = {n for n, c in nodes.NODE_CLASS_MAPPINGS.items()
               if not str(getattr(c, "RELATIVE_PYTHON_MODULE", "")).startswith("custom_nodes.")}  # fmt: skip
    result: dict[str, Any] = {"comfyui_version": comfyui_version.__version__, "seconds": round(time.time() - started, 1),
                              "builtin_node_count": len(builtin), "packs": {}}  # fmt: skip
    for name in packs:
        result["packs"][name] = pack_entry(nodes, custom, name, collect, builtin)
    if args.object_info:
        names = [n for entry in result["packs"].values() for n in entry["nodes"]]
        args.object_info.write_text(json.dumps(object_info(nodes, names), indent=1))
    if args.workflows and args.save_outputs:
        args.save_outputs.mkdir(parents=True, exist_ok=True)
        for name in packs:
            flow = args.workflows / f"{name}.json"
            if flow.is_file():
                try:
                    status = run_workflow(flow, args.save_outputs / f"{name}.pt")
                except Exception:  # noqa: BLE001
                    status = "failed: " + traceback.format_exc().strip().splitlines()[-1]
                result["packs"][name]["workflow"] = status
    args.json.write_text(json.dumps(result, indent=1))
    for name, entry in result["packs"].items():
        print(
            f"{name:32} nodes={len(entry['nodes']):4} error={entry['error']} workflow={entry.get('workflow')}"
        )
    sys.stdout.flush()
    os._exit(0)  # packs leave threads running (Impact's wildcard loader): do not wait for them


if __name__ == "__main__":
    sys.exit(main())
