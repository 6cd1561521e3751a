"""Which web UI `diffgraph serve` serves at `/`: ComfyUI's official frontend (the PyPI package
`comfyui-frontend-package`, the default), the built-in canvas (`web/`), or a folder the user names
(for instance another version of the official frontend unpacked from its wheel).

Only paths are looked up here; nothing is imported from the package (it holds static files only).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from engine.server.config import default_web_root

OFFICIAL = "official"
BUILTIN = "builtin"
FRONTEND_PACKAGE = "comfyui-frontend-package"
TEMPLATES_PACKAGE = "comfyui-workflow-templates"


class FrontEndError(ValueError):
    """The chosen UI cannot be served; the message says how to fix it."""


def _package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def official_frontend_root() -> Path | None:
    """The official frontend's static folder (holds index.html), or None when it is not installed."""
    package = _package_dir("comfyui_frontend_package")
    if package is None or not (package / "static" / "index.html").is_file():
        return None
    return package / "static"


def frontend_version(root: Path) -> str | None:
    """The official frontend's version when `root` is the installed package's static folder."""
    official = official_frontend_root()
    if official is None or root.resolve() != official.resolve():
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(FRONTEND_PACKAGE)
    except PackageNotFoundError:
        return None


# Where the optional templates live: the legacy meta package held them all under templates/; newer
# releases split them into a JSON package (the indexes and workflows) and media bundles (images), each
# with a flat templates/ folder (comfyui_workflow_templates_core's BUNDLE_PACKAGE_MAP).
TEMPLATE_PACKAGES = (
    "comfyui_workflow_templates",
    "comfyui_workflow_templates_json",
    "comfyui_workflow_templates_media_api",
    "comfyui_workflow_templates_media_video",
    "comfyui_workflow_templates_media_image",
    "comfyui_workflow_templates_media_other",
    "comfyui_workflow_templates_media_assets_01",
    "comfyui_workflow_templates_media_assets_02",
)


def templates_roots() -> list[Path]:
    """The installed `templates/` folders of the optional `comfyui-workflow-templates` packages, in
    lookup order (empty without them: the frontend then shows an empty templates browser)."""
    roots = []
    for module in TEMPLATE_PACKAGES:
        package = _package_dir(module)
        if package is not None and (package / "templates").is_dir():
            roots.append(package / "templates")
    return roots


def resolve_front_end(choice: str) -> Path:
    """The folder to serve for `--front-end CHOICE`: official, builtin, or a folder holding index.html."""
    if choice == OFFICIAL:
        root = official_frontend_root()
        if root is None:
            raise FrontEndError(
                f"the official frontend is not installed: run `pip install {FRONTEND_PACKAGE}` "
                "(it is a dependency of diffgraph, so `make install` installs it), or start the server "
                "with --front-end builtin to use the built-in canvas"
            )
        return root
    if choice == BUILTIN:
        return default_web_root()
    folder = Path(choice).expanduser()
    if not (folder / "index.html").is_file():
        raise FrontEndError(
            f"--front-end {choice!r}: expected 'official', 'builtin' or a folder holding index.html "
            f"(for another frontend version: the 'static' folder of an unpacked {FRONTEND_PACKAGE} wheel)"
        )
    return folder.resolve()
