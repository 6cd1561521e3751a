"""How far real ComfyUI custom-node packs get in diffgraph: a per-pack table.

    .venv/bin/python benchmarks/custom_node_packs.py PACKS_DIR [--workflows DIR] [--reference FILE]
        [--json OUT] [--only PACK ...] [--base-directory DIR] [--models-directory DIR] [--no-models]

PACKS_DIR is a folder of pack checkouts (git clones of ComfyUI custom-node repositories); it becomes the
runtime's custom_nodes folder, exactly as `diffgraph serve --base-directory` would load it. Per pack:

- ``ours``: node types diffgraph registered from the pack; ``declared``: the keys of the pack's own
  NODE_CLASS_MAPPINGS (what it asks to register; unknown when its import failed);
- ``comfyui``: node types the reference ComfyUI registers from the same checkout, from ``--reference``
  (a JSON file ``{"comfyui_version": ..., "packs": {name: {"nodes": [...], "error": ...}}}``, written by
  running ComfyUI's own node loading over the same folder); ``%`` is ours / comfyui (of the names ComfyUI
  registers), or ours / declared without a reference;
- the import error (its last line, and the deepest frame in the pack and in diffgraph's ComfyUI
  environment modules, which says whose code gave up), per-node errors and loader warnings;
- ``blocked: torchvision`` when the import failed only because torchvision cannot be imported (PyPI has
  no CPU build of it: the CUDA wheel dies on a CPU torch with "operator torchvision::nms does not exist");
- with ``--workflows DIR``: ``DIR/<pack>.json`` (API format) is validated and executed; ok or the error.

Pack chatter (packs print while importing) goes to stderr; stdout has only the table (or nothing but the
JSON path with ``--json``). Needs no network; packs that download models at import time fail as they
would offline.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from comfy_pack_reference import plain  # noqa: E402 - the ComfyUI side saves outputs the same way

from engine.folders import Folders  # noqa: E402 - after the sys.path line, to run from a checkout
from engine.runtime import Runtime, build_runtime  # noqa: E402

ENV_DIR = ROOT / "engine" / "comfy_compat" / "env"
FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')
TORCHVISION_FAILURES = ("No module named 'torchvision'", "torchvision::nms does not exist")


@dataclass
class PackRow:
    name: str
    ours: int = 0
    declared: int | None = None
    comfyui: int | None = None
    comfyui_error: str | None = None
    missing: list[str] = field(default_factory=list)  # ComfyUI registers them, we don't
    extra: list[str] = field(default_factory=list)  # we register them, ComfyUI doesn't
    error: str | None = None  # last line of the import traceback
    error_in_pack: str | None = None  # deepest frame inside the pack
    error_in_env: str | None = None  # deepest frame inside engine/comfy_compat/env
    blocked: str | None = None  # "torchvision" (the only reason), "needs <module>", "...; torchvision next"
    node_errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    import_seconds: float = 0.0
    workflow: str | None = None  # "ok", "failed: ...", None when no workflow was given
    workflow_seconds: float | None = None
    compare: dict[str, Any] | None = None  # {"same", "close", "differs": [...], "missing": [...]}

    @property
    def percent(self) -> float | None:
        base = self.comfyui if self.comfyui is not None else self.declared
        if not base:
            return None
        return (
            100.0 * (base - len(self.missing)) / base
            if self.comfyui is not None
            else 100.0 * self.ours / base
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packs_dir", type=Path, help="folder of pack checkouts (the custom_nodes folder)")
    parser.add_argument("--workflows", type=Path, help="folder of API-format workflows named <pack>.json")
    parser.add_argument("--reference", type=Path, help="ComfyUI's per-pack registrations (JSON)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--only", nargs="*", default=[], help="report only these packs (all still load)")
    parser.add_argument(
        "--base-directory", type=Path, help="input/output/temp/models root (default: a temp dir)"
    )
    parser.add_argument("--models-directory", type=Path, help="root of the model folders")
    parser.add_argument("--input-directory", type=Path, help="input folder (images the workflows load)")
    parser.add_argument("--no-models", action="store_true", help="build the runtime without devices/models")
    parser.add_argument(
        "--save-outputs", type=Path, help="write each workflow's node outputs to DIR/<pack>.pt"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="compare node outputs with DIR/<pack>.pt (comfy_pack_reference.py)",
    )
    return parser.parse_args(argv)


@functools.cache
def torchvision_state() -> str:
    """'importable', 'absent' or 'broken: <why>' - said in the header, as it decides six packs."""
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        return "absent"
    except Exception as exc:  # noqa: BLE001 - the CUDA wheel raises RuntimeError on a CPU torch
        return f"broken: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return "importable"


def build(args: argparse.Namespace, base: Path) -> Runtime:
    folders = Folders.create(
        base, models_directory=args.models_directory, input_directory=args.input_directory
    )
    folders.custom_nodes = [args.packs_dir.resolve()]
    with contextlib.redirect_stdout(sys.stderr):
        return build_runtime(folders, with_models=not args.no_models)


VENDORED = {"repos", "tests", "test", "examples", "tools", "scripts", "docs", "src"}
TORCHVISION_IMPORT = re.compile(r"^(import torchvision|from torchvision[ .])", re.MULTILINE)


def imports_torchvision(pack: Path) -> bool:
    """Whether some file of the pack imports torchvision at module level (column 0) - a pack that failed on
    something else first will fail on it next where torchvision cannot be imported."""
    for path in pack.rglob("*.py"):
        parts = path.relative_to(pack).parts
        if len(parts) > 3 or VENDORED.intersection(parts):  # bundled third-party code is imported lazily
            continue
        try:
            if TORCHVISION_IMPORT.search(path.read_text(encoding="utf-8", errors="replace")):
                return True
        except OSError:
            continue
    return False


MISSING_MODULE = re.compile(r"^ModuleNotFoundError: No module named '([\w.]+)'")


def missing_package(error_line: str) -> str | None:
    """'needs <module>' when the import failed on a third-party module (the pack's own requirements),
    None when it failed on anything else - a ComfyUI module diffgraph lacks is the layer's gap."""
    from engine.comfy_compat.binding import env_module_names

    match = MISSING_MODULE.match(error_line)
    if match is None or match[1].split(".")[0] in env_module_names():
        return None
    return f"needs {match[1].split('.')[0]}"


def deepest_frame(error: str, inside: Path) -> str | None:
    """`file:line in func` of the last traceback frame under `inside` (None when no frame is)."""
    found = None
    prefix = str(inside.resolve())
    for line in error.splitlines():
        match = FRAME.match(line)
        if match and str(Path(match["path"]).resolve()).startswith(prefix):
            rel = Path(match["path"]).resolve().relative_to(inside.resolve())
            found = f"{rel}:{match['line']} in {match['func']}"
    return found


def error_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else error


def pack_row(runtime: Runtime, packs_dir: Path, record: Any, reference: dict[str, Any]) -> PackRow:
    row = PackRow(name=record.name, ours=len(record.nodes), import_seconds=round(record.import_seconds, 2))
    row.node_errors = dict(record.node_errors)
    row.warnings = list(record.warnings)
    if record.error:
        row.error = error_line(record.error)
        row.error_in_pack = deepest_frame(record.error, packs_dir / record.name)
        row.error_in_env = deepest_frame(record.error, ENV_DIR)
        if any(text in record.error for text in TORCHVISION_FAILURES):
            row.blocked = "torchvision"
        else:
            needs = missing_package(row.error)
            # a pack that failed on something else first fails on torchvision next, where it cannot import
            tv_next = torchvision_state() != "importable" and imports_torchvision(packs_dir / record.name)
            row.blocked = "; ".join(x for x in (needs, "torchvision next" if tv_next else None) if x) or None
    module = sys.modules.get(record.module or "")
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None) if module is not None else None
    if isinstance(mappings, dict):
        row.declared = len(mappings)
    ref = reference.get("packs", {}).get(record.name)
    if ref is not None:
        names = set(ref.get("nodes", []))
        row.comfyui, row.comfyui_error = len(names), ref.get("error")
        ours = set(record.nodes)
        row.missing, row.extra = sorted(names - ours), sorted(ours - names)
    return row


def run_workflow(runtime: Runtime, path: Path) -> tuple[str, float, Any]:
    """Validate and execute one API-format workflow: ('ok' or 'failed: <first line>', seconds, result)."""
    from engine.graph.loading import load_workflow_file
    from engine.graph.validate import validate_workflow

    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            workflow = load_workflow_file(path, runtime.registry)
            validated = validate_workflow(workflow, runtime.registry)
            result = runtime.executor.execute(validated)
    except Exception as exc:  # noqa: BLE001 - a broken workflow is a row, not the end of the report
        lines = str(exc).strip().splitlines()
        text = " ".join(line.strip() for line in lines[:2])[:220]  # a validation error's first problem too
        return f"failed: {type(exc).__name__}: {text}", time.perf_counter() - started, None
    seconds = time.perf_counter() - started
    if result.errors:
        first = result.errors[0]
        return f"failed: {str(first).strip().splitlines()[0][:160]}", seconds, result
    return ("ok" if result.ok else f"failed: status {result.status}"), seconds, result


SAME, CLOSE = 1e-4, 1.0 / 255  # largest absolute difference for "same" and for "close" (one 8-bit step)


def plain_outputs(result: Any) -> dict[str, list[list[Any]]]:
    return {
        node_id: [[plain(v) for v in output] for output in cached.outputs]
        for node_id, cached in result.results.items()
    }


def difference(ours: Any, ref: Any) -> float | None:
    """Largest absolute difference (0 when equal, inf when incomparable), None for opaque values."""
    import torch

    if isinstance(ref, str) and ref.startswith("<") and ref.endswith(">"):
        return None
    if isinstance(ref, torch.Tensor) or isinstance(ours, torch.Tensor):
        if not (isinstance(ref, torch.Tensor) and isinstance(ours, torch.Tensor)) or ours.shape != ref.shape:
            return float("inf")
        if not ref.numel():
            return 0.0
        ours, ref = ours.double(), ref.double()
        nan = ref.isnan()
        if not torch.equal(nan, ours.isnan()):  # NaN where ComfyUI computes NaN too counts as equal
            return float("inf")
        return float((ours[~nan] - ref[~nan]).abs().max()) if bool((~nan).any()) else 0.0
    if isinstance(ref, dict) and isinstance(ours, dict):
        parts = [difference(ours.get(k), v) for k, v in ref.items() if k == "samples"]
        return max((p for p in parts if p is not None), default=None)
    if isinstance(ref, (int, float)) and isinstance(ours, (int, float)) and not isinstance(ref, bool):
        return abs(float(ours) - float(ref))
    return 0.0 if ours == ref else float("inf")


def compare_outputs(ours: dict[str, Any], ref: dict[str, Any], flow: dict[str, Any]) -> dict[str, Any]:
    """Per node of the workflow: same (<= 1e-4), close (<= 1/255) or differs, by its largest difference."""
    summary: dict[str, Any] = {"same": 0, "close": [], "differs": [], "missing": []}
    for node_id, ref_outputs in ref.items():
        label = f"{node_id}:{flow.get(node_id, {}).get('class_type', '?')}"
        if node_id not in ours:
            summary["missing"].append(label)
            continue
        diffs = [
            difference(o, r)
            for ours_out, ref_out in zip(ours[node_id], ref_outputs, strict=False)
            for o, r in zip(ours_out, ref_out, strict=False)
        ]
        padding = ours[node_id][
            len(ref_outputs) :
        ]  # a short return: we pad with None, ComfyUI leaves it short
        if len(ours[node_id]) < len(ref_outputs) or any(v is not None for out in padding for v in out):
            diffs.append(float("inf"))
        known = [d for d in diffs if d is not None]
        if not known:
            continue
        worst = max(known)
        if worst <= SAME:
            summary["same"] += 1
        elif worst <= CLOSE:
            summary["close"].append(f"{label} ({worst:.2g})")
        else:
            summary["differs"].append(f"{label} ({worst:.3g})")
    return summary


def workflow_outputs(args: argparse.Namespace, row: PackRow, flow_path: Path, result: Any) -> None:
    import torch

    if result is None or not result.results:
        return
    outputs = plain_outputs(result)
    if args.save_outputs:
        args.save_outputs.mkdir(parents=True, exist_ok=True)
        torch.save(outputs, args.save_outputs / f"{row.name}.pt")
    reference = args.compare / f"{row.name}.pt" if args.compare else None
    if reference is not None and reference.is_file():
        flow = json.loads(flow_path.read_text())
        row.compare = compare_outputs(outputs, torch.load(reference, weights_only=False), flow)


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def render(rows: list[PackRow], header: list[str]) -> str:
    lines = [*header, ""]
    title = ("pack", "ours", "declared", "comfyui", "%", "status", "workflow", "same as ComfyUI")
    table = [title]
    for row in rows:
        if row.blocked and row.blocked != "torchvision":
            needs = row.blocked.split("; ")[0] if row.blocked.startswith("needs ") else None
            status = "import failed" + (f": {needs}" if needs else "")
            status += " (+torchvision)" if row.blocked.endswith("torchvision next") else ""
        elif row.blocked:
            status = f"blocked: {row.blocked}"
        elif row.error:
            status = "import failed"
        else:
            status = "loaded" + (f", {len(row.node_errors)} node errors" if row.node_errors else "")
        pct = row.percent
        table.append(
            (
                row.name,
                str(row.ours),
                fmt(row.declared),
                fmt(row.comfyui),
                "-" if pct is None else f"{pct:.0f}",
                status,
                fmt(row.workflow and row.workflow.split(":")[0]),
                compare_cell(row.compare),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(title))]
    for i, r in enumerate(table):
        lines.append(" | ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    lines.append("")
    lines.extend(details(rows))
    return "\n".join(lines)


def compare_cell(compare: dict[str, Any] | None) -> str:
    if compare is None:
        return "-"
    total = compare["same"] + len(compare["close"]) + len(compare["differs"]) + len(compare["missing"])
    text = f"{compare['same']}/{total} nodes"
    if compare["close"]:
        text += f", {len(compare['close'])} within 1/255"
    return text


def details(rows: list[PackRow]) -> list[str]:
    out: list[str] = []
    for row in rows:
        notes = []
        if row.error:
            where = "; ".join(
                x
                for x in (
                    row.error_in_env and f"env {row.error_in_env}",
                    row.error_in_pack and f"pack {row.error_in_pack}",
                )
                if x
            )
            notes.append(f"  import error: {row.error}" + (f"  [{where}]" if where else ""))
        if row.comfyui_error:
            notes.append(f"  ComfyUI's import error: {row.comfyui_error}")
        if row.missing and row.ours:
            shown = ", ".join(row.missing[:12]) + (
                f" ... (+{len(row.missing) - 12})" if len(row.missing) > 12 else ""
            )
            notes.append(f"  missing vs ComfyUI ({len(row.missing)}): {shown}")
        if row.extra:
            notes.append(f"  registered here, not by ComfyUI ({len(row.extra)}): {', '.join(row.extra[:8])}")
        for name, message in list(row.node_errors.items())[:8]:
            notes.append(
                f"  node error {name}: {message.strip().splitlines()[-1][:200] if message.strip() else ''}"
            )
        if len(row.node_errors) > 8:
            notes.append(f"  ... {len(row.node_errors) - 8} more node errors")
        for warning in row.warnings[:5]:
            notes.append(f"  warning: {warning[:200]}")
        if row.workflow and row.workflow != "ok" and not row.workflow.startswith("skipped"):
            notes.append(f"  workflow: {row.workflow}")
        if row.compare and (row.compare["differs"] or row.compare["missing"]):
            notes.append(f"  outputs differ from ComfyUI: {', '.join(row.compare['differs'][:10]) or '-'}")
            if row.compare["missing"]:
                notes.append(f"  nodes ComfyUI ran and we did not: {', '.join(row.compare['missing'][:10])}")
        if notes:
            out.append(f"{row.name}:")
            out.extend(notes)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.packs_dir.is_dir():
        print(f"not a folder: {args.packs_dir}", file=sys.stderr)
        return 2
    reference = json.loads(args.reference.read_text()) if args.reference else {}
    with contextlib.ExitStack() as stack:
        base = args.base_directory or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="packs-")))
        started = time.perf_counter()
        tv = torchvision_state()
        try:
            runtime = build(args, base)
        except Exception:  # noqa: BLE001 - say what broke the whole runtime, then stop
            traceback.print_exc()
            return 2
        load_seconds = time.perf_counter() - started
        rows = []
        for record in runtime.plugins.packs:
            if record.builtin or (args.only and record.name not in args.only):
                continue
            row = pack_row(runtime, args.packs_dir, record, reference)
            workflow = args.workflows / f"{record.name}.json" if args.workflows else None
            if workflow is not None and workflow.is_file() and record.error:
                row.workflow = "skipped: the pack did not import"
            elif workflow is not None and workflow.is_file():
                row.workflow, seconds, result = run_workflow(runtime, workflow)
                row.workflow_seconds = round(seconds, 2)
                workflow_outputs(args, row, workflow, result)
            rows.append(row)
    header = [
        f"packs: {args.packs_dir}  (loaded in {load_seconds:.1f}s; torchvision: {tv})",
        f"reference: ComfyUI {reference.get('comfyui_version', '?')} ({args.reference})"
        if reference
        else "reference: none (% is of the pack's declared NODE_CLASS_MAPPINGS)",
    ]
    print(render(rows, header))
    if args.json:
        document = {
            "header": header,
            "torchvision": tv,
            "rows": [{**asdict(r), "percent": r.percent} for r in rows],
        }
        args.json.write_text(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
