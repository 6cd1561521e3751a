"""`diffgraph run | validate | nodes | serve`: the command line.

`run` executes a workflow (API or UI format) headless, without a server, with a progress line per node
and per step. Exit codes: 0 success, 1 validation problems, 2 execution error or bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from engine.errors import DiffgraphError, WorkflowFormatError, WorkflowValidationError
from engine.execution import events as ev
from engine.folders import Folders
from engine.graph.api_format import is_link
from engine.graph.loading import load_workflow_file
from engine.graph.workflow import Link, Workflow
from engine.reference_schema import load_reference, missing_by_category
from engine.runtime import Runtime, build_runtime
from engine.startup import collector_paused, end_of_start_up, import_times_lines, log_import_times

if TYPE_CHECKING:
    import torch

    from engine.memory.devices import MemoryOptions

EXIT_OK, EXIT_INVALID, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130


def _add_folder_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("folders")
    group.add_argument(
        "--base-directory", help="root for models/, input/, output/, custom_nodes/ (default: cwd)"
    )
    group.add_argument("--output-directory", help="where output images are written")
    group.add_argument("--input-directory", help="where input images are read from")
    group.add_argument("--temp-directory", help="where temporary previews are written")
    group.add_argument("--user-directory", help="user data (queue, history, settings)")
    group.add_argument("--models-directory", help="root of the model folders (default: BASE/models)")
    group.add_argument(
        "--extra-model-paths-config",
        action="append",
        default=[],
        metavar="YAML",
        help="ComfyUI-style extra_model_paths.yaml (may be given several times)",
    )
    group.add_argument("--disable-custom-nodes", action="store_true", help="load only the built-in nodes")


def add_memory_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the device/memory flags to `parser` (ComfyUI's names; --ram-budget is ours)."""
    # Imported here: engine.memory imports torch, which importing this module must not pay for.
    from engine.memory.devices import DTYPE_NAMES, VRAMMode

    group = parser.add_argument_group("device and memory")
    group.add_argument("--cpu", action="store_true", help="Run everything on the CPU (slow).")
    group.add_argument(
        "--cuda-device", type=int, default=None, metavar="INDEX", help="Which CUDA device to use (default 0)."
    )
    modes = group.add_mutually_exclusive_group()
    for mode, text in (
        (VRAMMode.GPU_ONLY, "Keep everything (models, text encoders, intermediates) on the GPU."),
        (VRAMMode.HIGH, "Keep models in GPU memory instead of offloading them to RAM after use."),
        (VRAMMode.NORMAL, "Force normal VRAM use (load fully when it fits, otherwise partially)."),
        (VRAMMode.LOW, "Split models so that only part of them is resident on the GPU (less VRAM)."),
        (VRAMMode.NO, "Keep no weights resident: stream every layer to the GPU for its forward pass."),
    ):
        modes.add_argument(
            f"--{mode.value}", dest="vram_mode", action="store_const", const=mode.value, help=text
        )
    group.add_argument(
        "--reserve-vram",
        type=float,
        default=None,
        metavar="GB",
        help="GB of VRAM to leave free for other software (default: a small safety margin).",
    )
    choices = list(DTYPE_NAMES)
    group.add_argument("--unet-dtype", choices=choices, default=None, help="Storage dtype of the UNet.")
    group.add_argument(
        "--text-encoder-dtype", choices=choices, default=None, help="Storage dtype of the text encoders."
    )
    group.add_argument("--vae-dtype", choices=choices, default=None, help="Dtype of the VAE.")
    precision = group.add_mutually_exclusive_group()
    precision.add_argument("--force-fp32", action="store_true", help="Run every model in float32.")
    precision.add_argument("--force-fp16", action="store_true", help="Run models in float16 where allowed.")
    group.add_argument("--cpu-vae", action="store_true", help="Run the VAE on the CPU.")
    group.add_argument(
        "--ram-budget",
        type=float,
        default=None,
        metavar="GB",
        help="Keep at most this many GB of offloaded model weights in RAM; beyond it, least recently "
        "used models are dropped and re-read from their (memory-mapped) file when needed again.",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the diffusion models and VAE decoders (slow first run, faster after).",
    )
    return group


def memory_options_from_args(ns: argparse.Namespace) -> MemoryOptions:
    """engine.memory's options from a namespace filled by a parser `add_memory_arguments` was applied to."""
    from engine.memory.devices import MemoryOptions, VRAMMode, parse_dtype

    def dtype(attr: str) -> torch.dtype | None:
        value = getattr(ns, attr, None)
        return parse_dtype(value) if value else None

    return MemoryOptions(
        cpu=bool(getattr(ns, "cpu", False)),
        vram_mode=VRAMMode(getattr(ns, "vram_mode", None) or "auto"),
        reserve_vram_gb=getattr(ns, "reserve_vram", None),
        cuda_device=getattr(ns, "cuda_device", None),
        unet_dtype=dtype("unet_dtype"),
        text_encoder_dtype=dtype("text_encoder_dtype"),
        vae_dtype=dtype("vae_dtype"),
        force_fp32=bool(getattr(ns, "force_fp32", False)),
        force_fp16=bool(getattr(ns, "force_fp16", False)),
        cpu_vae=bool(getattr(ns, "cpu_vae", False)),
        ram_budget_gb=getattr(ns, "ram_budget", None),
        compile=bool(getattr(ns, "compile", False)),
    )


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        nargs="?",
        const="0.0.0.0",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; without a value 0.0.0.0). Any non-loopback address "
        "requires an access token, generated and printed once unless --access-token is given",
    )
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument(
        "--access-token", help="token clients must send (Authorization: Bearer, ?token=, or the login cookie)"
    )
    parser.add_argument(
        "--enable-cors-header",
        metavar="ORIGIN",
        help="allow this one origin (e.g. https://app.example) to call the API",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="extra Host name to accept (proxies)",
    )
    parser.add_argument(
        "--max-upload-size", type=float, default=100.0, metavar="MB", help="upload limit (100)"
    )
    parser.add_argument("--max-history", type=int, default=10000, help="history entries kept (10000)")
    parser.add_argument(
        "--preview-format", choices=("jpeg", "png"), default="jpeg", help="live preview frames"
    )
    parser.add_argument(
        "--preview-method",
        choices=("auto", "latent2rgb", "taesd", "none"),
        default="auto",
        help="sampler previews: taesd (models/vae_approx decoders), latent2rgb, auto (taesd when the "
        "model family's decoder is there, else latent2rgb) or none",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds the running prompt may finish on exit",
    )
    parser.add_argument(
        "--front-end",
        default="official",
        metavar="official|builtin|PATH",
        help="the web UI served at /: ComfyUI's official frontend (default; the comfyui-frontend-package "
        "package), the built-in canvas (web/), or a folder holding index.html (e.g. another frontend version)",
    )
    parser.add_argument(
        "--quick-test-for-ci",
        action="store_true",
        help="start as usual (loopback, a free port), answer one /object_info, stop; exit 0 if it answered",
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO")
    scale = parser.add_argument_group("scale-out (docs/scale-out.md)")
    scale.add_argument(
        "--executor",
        choices=("embedded", "ray"),
        default="embedded",
        help="where prompts run: in this process (default) or on Ray worker actors (pip install diffgraph[ray])",
    )
    scale.add_argument(
        "--ray-address", metavar="ADDR", help="the Ray cluster to join (default: start a local Ray instance)"
    )
    scale.add_argument(
        "--workers", type=int, metavar="N", help="Ray workers (default: one per GPU of the cluster, else 1)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffgraph", description="Node-graph workflow engine for Stable Diffusion"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a workflow JSON headless (API or UI format)")
    run.add_argument("workflow", help="path to the workflow .json")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE_ID.INPUT=VALUE",
        help="override an input; VALUE is parsed as JSON when possible (e.g. --set 3.seed=42)",
    )
    run.add_argument("--target", action="append", default=[], help="run only what this output node needs")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    _add_folder_options(run)
    add_memory_arguments(run)

    validate = sub.add_parser("validate", help="check a workflow and list every problem")
    validate.add_argument("workflow")
    validate.add_argument("--json", action="store_true", help="print problems as ComfyUI node_errors JSON")
    _add_folder_options(validate)

    nodes = sub.add_parser("nodes", help="list the available node types")
    nodes.add_argument("--json", action="store_true", help="print the /object_info schema")
    nodes.add_argument(
        "--missing-vs",
        metavar="FILE",
        help="list the node types of a reference /object_info JSON (e.g. ComfyUI's) that are not available",
    )
    _add_folder_options(nodes)

    serve = sub.add_parser("serve", help="start the HTTP/WebSocket server (docs/server.md)")
    _add_serve_options(serve)
    _add_folder_options(serve)
    add_memory_arguments(serve)
    return parser


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    folders = Folders.create(
        args.base_directory,
        output_directory=args.output_directory,
        input_directory=args.input_directory,
        temp_directory=args.temp_directory,
        user_directory=args.user_directory,
        models_directory=args.models_directory,
    )
    for config in args.extra_model_paths_config:
        folders.load_extra_model_paths(config)
    with_models = args.command in ("run", "serve")
    memory_options = None
    if with_models:
        memory_options = memory_options_from_args(args)
    runtime = build_runtime(
        folders,
        load_custom_nodes=not args.disable_custom_nodes,
        memory_options=memory_options,
        with_models=with_models,
        preview_method=getattr(args, "preview_method", "auto"),
    )
    end_of_start_up(freeze=args.command == "serve")  # main paused the collector: engine/startup.py says why
    return runtime


def parse_override(text: str) -> tuple[str, str, Any]:
    """'5.seed=42' -> ('5', 'seed', 42). The value is JSON if it parses, else the raw string."""
    target, sep, raw = text.partition("=")
    node_id, dot, input_name = target.rpartition(".")
    if not sep or not dot or not node_id or not input_name:
        raise ValueError(f"--set {text!r}: expected NODE_ID.INPUT=VALUE, e.g. --set 3.seed=42")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if is_link(value):
        value = Link(str(value[0]), int(value[1]))
    return node_id, input_name, value


class ProgressPrinter:
    """An event sink drawing one line per node and a step bar for progress events."""

    def __init__(self, stream: TextIO, total_nodes: int):
        self.stream = stream
        self.total = total_nodes
        self.count = 0
        self.tty = stream.isatty()
        self.started = time.perf_counter()

    def __call__(self, event: Any) -> None:
        if isinstance(event, ev.ExecutionCached) and event.nodes:
            self._line(f"cached: {len(event.nodes)} node(s) reused")
        elif isinstance(event, ev.NodeExecuting):
            self.count += 1
            self._line(f"[{self.count}] {event.node_type} (node {event.node_id})")
        elif isinstance(event, ev.NodeProgress):
            width = 30
            filled = int(width * event.value / max(event.max, 1))
            bar = "#" * filled + "-" * (width - filled)
            text = f"    [{bar}] {event.value}/{event.max}"
            if self.tty:
                self.stream.write("\r" + text + ("\n" if event.value >= event.max else ""))
                self.stream.flush()
            elif event.value >= event.max:
                self._line(text)
        elif isinstance(event, ev.ExecutionFailed):
            self._line(
                f"error in node {event.node_id} ({event.node_type}): {event.exception_type}: {event.exception_message}"
            )
        elif isinstance(event, ev.ExecutionFinished):
            self._line(
                f"{event.status} in {time.perf_counter() - self.started:.2f}s "
                f"({len(event.executed)} executed, {len(event.cached)} cached)"
            )

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _load(args: argparse.Namespace, runtime: Runtime) -> Workflow:
    return load_workflow_file(args.workflow, runtime.registry)


def _report_plugin_errors(runtime: Runtime, stream: TextIO) -> None:
    for pack in runtime.plugins.failed():
        if pack.error:
            last = pack.error.strip().splitlines()[-1]
            stream.write(f"warning: plugin {pack.name!r} failed to import and was skipped: {last}\n")
        for message in pack.node_errors.values():
            stream.write(f"warning: plugin {pack.name!r}: {message}\n")


def cmd_run(args: argparse.Namespace) -> int:
    runtime = runtime_from_args(args)
    _report_plugin_errors(runtime, sys.stderr)
    workflow = _load(args, runtime)
    for text in args.set:
        node_id, name, value = parse_override(text)
        workflow.set_input(node_id, name, value)
    runtime.folders.create_directories()
    from engine.graph.validate import validate_workflow

    validated = validate_workflow(workflow, runtime.registry, args.target or None, partial=True)
    if validated.rejected is not None:  # ComfyUI runs the valid outputs and logs the others
        skipped = ", ".join(validated.rejected_targets)
        sys.stderr.write(f"warning: output node(s) {skipped} failed validation and will not run:\n")
        sys.stderr.write(f"{validated.rejected}\n")
    sink = ev.discard if args.quiet else ProgressPrinter(sys.stderr, len(validated.order))
    extra = {"extra_pnginfo": {"workflow": workflow.ui_document}} if workflow.ui_document else {}
    try:
        result = runtime.executor.execute(validated, sink=sink, extra_data=extra)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    for ui in result.ui_outputs.values():
        for image in ui.get("images", []) if isinstance(ui, dict) else []:
            if isinstance(image, dict) and "filename" in image:
                folder = runtime.folders.roots(image.get("type", "output"))[0]
                print(folder / image.get("subfolder", "") / image["filename"])
    if result.errors:
        for error in result.errors:
            sys.stderr.write(f"\n{error}\n{error.traceback_text}")
        return EXIT_FAILED
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from engine.graph.validate import validate_workflow

    runtime = runtime_from_args(args)
    workflow = _load(args, runtime)
    try:
        validated = validate_workflow(workflow, runtime.registry)
    except WorkflowValidationError as exc:
        if args.json:
            print(json.dumps({"error": exc.prompt_error(), "node_errors": exc.node_errors()}, indent=2))
        else:
            print(exc)
        return EXIT_INVALID
    print(f"ok: {len(validated.order)} node(s) to run for {len(validated.targets)} output node(s)")
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    # Packs print while they import; that chatter goes to stderr so stdout holds only the listing (and
    # with --json, only JSON).
    with contextlib.redirect_stdout(sys.stderr):
        runtime = runtime_from_args(args)
    for line in import_times_lines(runtime.plugins):
        sys.stderr.write(line + "\n")
    if args.json:
        _report_plugin_errors(runtime, sys.stderr)
        print(json.dumps(runtime.registry.object_info(), indent=1, default=str))
        return EXIT_OK
    if args.missing_vs:
        return _print_missing(runtime, args.missing_vs)
    rows = sorted(runtime.registry, key=lambda d: (d.category, d.node_type))
    for definition in rows:
        source = runtime.registry.source_of(definition.node_type)
        print(f"{definition.category:<28} {definition.node_type:<32} {definition.title:<32} [{source}]")
    _report_plugin_errors(runtime, sys.stdout)
    for pack in runtime.plugins.packs:
        for warning in pack.warnings:
            print(f"note: plugin {pack.name!r}: {warning}")
    return EXIT_OK


def _print_missing(runtime: Runtime, reference_file: str) -> int:
    """The reference's node types we lack, by category, then the count covered / total."""
    reference = load_reference(reference_file)
    missing = missing_by_category(reference, (d.node_type for d in runtime.registry))
    for category, names in missing.items():
        print(f"{category or '(no category)'} ({len(names)}):")
        for name in names:
            print(f"  {name}")
    lacking = sum(len(names) for names in missing.values())
    print(f"covered {len(reference) - lacking}/{len(reference)} node types of {reference_file}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.server.app import serve
    from engine.server.config import ServerConfig
    from engine.server.logs import configure_logging

    if args.enable_cors_header == "*":
        raise ValueError("--enable-cors-header needs one origin (e.g. https://app.example), not '*'")
    from engine.server.frontend import resolve_front_end

    web_root = resolve_front_end(args.front_end)  # before loading anything: a missing UI fails fast
    configure_logging(args.log_format, args.log_level)
    runtime = runtime_from_args(args)
    _report_plugin_errors(runtime, sys.stderr)
    log_import_times(runtime.plugins)
    runtime.folders.create_directories()
    config = ServerConfig(
        host=args.listen,
        port=args.port,
        access_token=args.access_token,
        cors_origin=args.enable_cors_header,
        allowed_hosts=list(args.allowed_host),
        max_upload_bytes=int(args.max_upload_size * 1024**2),
        history_limit=args.max_history,
        preview_format=args.preview_format,
        shutdown_grace_s=args.shutdown_grace,
        web_root=web_root,
    )
    if args.quick_test_for_ci:
        from engine.server.quick_test import quick_test

        return EXIT_OK if quick_test(runtime, config) else EXIT_FAILED
    serve(runtime, config, queue_factory=_queue_factory(args, runtime))
    return EXIT_OK


def _queue_factory(args: argparse.Namespace, runtime: Runtime) -> Any:
    """None for the embedded worker; for `--executor ray` the Ray queue (imported only then)."""
    if args.executor != "ray":
        return None
    from engine.scaleout.actor import WorkerSpec
    from engine.scaleout.queue import ray_queue_factory

    spec = WorkerSpec(
        runtime.folders,
        load_custom_nodes=not args.disable_custom_nodes,
        memory_options=memory_options_from_args(args),
        preview_method=args.preview_method,
    )
    return ray_queue_factory(spec, workers=args.workers, address=args.ray_address)


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "nodes": cmd_nodes, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    with collector_paused():  # until the runtime is built (runtime_from_args): engine/startup.py says why
        args = build_parser().parse_args(argv)
        try:
            return COMMANDS[args.command](args)
        except WorkflowValidationError as exc:
            sys.stderr.write(f"{exc}\n")
            return EXIT_INVALID
        except (WorkflowFormatError, ValueError, KeyError, DiffgraphError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            sys.stderr.write(f"error: {message}\n")
            return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
