"""Read a workflow document in either format (API or UI) into a Workflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import WorkflowFormatError
from engine.graph.api_format import looks_like_api_format, parse_api_workflow
from engine.graph.ui_format import convert_ui_workflow, looks_like_ui_format
from engine.graph.workflow import Workflow
from engine.registry import NodeRegistry


def workflow_from_document(document: Any, registry: NodeRegistry) -> Workflow:
    if looks_like_ui_format(document):
        return convert_ui_workflow(document, registry)
    if isinstance(document, dict) and isinstance(document.get("prompt"), dict):
        # A saved /prompt request body: {"prompt": {...}, "extra_data": ...}
        document = document["prompt"]
    if looks_like_api_format(document):
        return parse_api_workflow(document)
    raise WorkflowFormatError(
        "not a workflow: expected ComfyUI's API format ({id: {class_type, inputs}}) "
        "or UI format ({nodes: [...], links: [...]})"
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == _PNG_SIGNATURE
    except OSError:
        return False


def _load_png_workflow(path: Path, registry: NodeRegistry) -> Workflow:
    """The graph embedded in a PNG saved by SaveImage (here or in ComfyUI): the API graph (`prompt`
    chunk, exactly what ran) when present, else the UI graph (`workflow` chunk). The UI graph is kept
    on the workflow so that images saved by the re-run embed it again."""
    from engine import imageio  # Pillow is imported only when an image is actually read

    try:
        chunks = imageio.png_metadata(path)
        document = imageio.embedded_workflow(path)
    except imageio.ImageFileError as exc:
        raise WorkflowFormatError(str(exc)) from exc
    try:
        workflow = workflow_from_document(document, registry)
    except WorkflowFormatError as exc:
        raise WorkflowFormatError(f"{path} (embedded workflow): {exc}") from exc
    ui = chunks.get("workflow")
    if workflow.ui_document is None and isinstance(ui, dict) and looks_like_ui_format(ui):
        workflow.ui_document = ui
    return workflow


def load_workflow_file(path: str | Path, registry: NodeRegistry) -> Workflow:
    """A workflow from a JSON file (API or UI format) or from a PNG with an embedded workflow."""
    path = Path(path)
    if _is_png(path):
        return _load_png_workflow(path, registry)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowFormatError(f"cannot read workflow file {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    try:
        return workflow_from_document(document, registry)
    except WorkflowFormatError as exc:
        raise WorkflowFormatError(f"{path}: {exc}") from exc
