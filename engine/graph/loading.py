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


def load_workflow_file(path: str | Path, registry: NodeRegistry) -> Workflow:
    path = Path(path)
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
