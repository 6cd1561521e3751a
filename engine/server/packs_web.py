"""What loaded node packs offer the official frontend besides nodes, read from their folders:
translations (`locales/<lang>/main.json` ...), example workflows (`example_workflows/*.json`) and
subgraph blueprints (`subgraphs/*.json`). The layouts are ComfyUI's, so existing packs work unchanged.
Plain functions of the pack list; the routes run them off the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from engine.plugins.loader import PackRecord

log = logging.getLogger("diffgraph.server.packs")

# Besides main.json, these files of a locale folder land under their own key (ComfyUI's layout).
LOCALE_EXTRA_FILES = ("nodeDefs", "commands", "settings")
# The folder names ComfyUI accepts for a pack's example workflows, preferred first.
EXAMPLE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
SUBGRAPH_SOURCE = "custom_node"


def pack_folders(packs: list[PackRecord]) -> dict[str, Path]:
    """Loaded, non-built-in packs that are folders, by name."""
    found: dict[str, Path] = {}
    for pack in packs:
        if pack.loaded and not pack.builtin and pack.path:
            path = Path(pack.path)
            folder = path if path.is_dir() else path.parent if path.name == "__init__.py" else None
            if folder is not None and folder.is_dir():
                found[pack.name] = folder
    return found


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("unreadable translation file", extra={"path": str(path), "reason": str(exc)})
        return {}
    return value if isinstance(value, dict) else {}


def merge_deep(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` merged into `into` (objects merged key by key, other values replaced); returns `into`."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_deep(into[key], value)
        else:
            into[key] = value
    return into


def translations(packs: list[PackRecord]) -> dict[str, Any]:
    """GET /i18n: {lang: {...main.json, nodeDefs, commands, settings}} merged over packs in name order."""
    result: dict[str, Any] = {}
    for _name, folder in sorted(pack_folders(packs).items()):
        locales = folder / "locales"
        if not locales.is_dir():
            continue
        for language in sorted(p for p in locales.iterdir() if p.is_dir()):
            entry = _read_json_object(language / "main.json")
            for key in LOCALE_EXTRA_FILES:
                extra = _read_json_object(language / f"{key}.json")
                if extra:
                    entry[key] = extra
            if entry:
                merge_deep(result.setdefault(language.name, {}), entry)
    return result


def example_folder(folder: Path) -> Path | None:
    for name in EXAMPLE_FOLDERS:
        if (folder / name).is_dir():
            return folder / name
    return None


def example_workflows(packs: list[PackRecord]) -> dict[str, list[str]]:
    """GET /workflow_templates: {pack: [workflow names without .json]} for packs that ship examples."""
    result: dict[str, list[str]] = {}
    for name, folder in sorted(pack_folders(packs).items()):
        examples = example_folder(folder)
        if examples is not None:
            names = sorted(p.stem for p in examples.glob("*.json") if p.is_file())
            if names:
                result[name] = names
    return result


def subgraph_blueprints(packs: list[PackRecord]) -> dict[str, dict[str, Any]]:
    """GET /global_subgraphs: {id: {source, name, path, info: {node_pack}}}; the id is a hash of the
    source and path, so it stays the same across restarts."""
    result: dict[str, dict[str, Any]] = {}
    for name, folder in sorted(pack_folders(packs).items()):
        for file in sorted((folder / "subgraphs").glob("*.json")):
            relative = f"{name}/subgraphs/{file.name}"
            blueprint_id = hashlib.sha256(f"{SUBGRAPH_SOURCE}{relative}".encode()).hexdigest()
            result[blueprint_id] = {
                "source": SUBGRAPH_SOURCE,
                "name": file.stem,
                "path": relative,
                "info": {"node_pack": name},
                "file": file,
            }
    return result
