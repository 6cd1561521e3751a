"""Where things live: models (by kind), input, output, temp, user data and custom_nodes.

An explicit object built by the CLI or app from its options (never a module global), so two runtimes in
one process can use different folders. Every file name coming from a workflow or a request goes through
`full_path`, which refuses names that escape the allowed folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.declarations import FileChoices
from engine.errors import UnsafePathError

WEIGHT_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# ComfyUI's model folder kinds; "unet" and "clip" are the older names of the last two.
MODEL_KINDS = (
    "checkpoints",
    "vae",
    "loras",
    "embeddings",
    "controlnet",
    "upscale_models",
    "clip",
    "unet",
    "diffusion_models",
    "text_encoders",
    "clip_vision",
    "vae_approx",
    "style_models",
    "gligen",
    "hypernetworks",
    "photomaker",
    "configs",
    "diffusers",
)
_ALIASES = {"diffusion_models": "unet", "text_encoders": "clip"}
# Folders that HTTP requests can read or write: paths there are confined after resolving symlinks.
DATA_KINDS = frozenset({"input", "output", "temp"})
# ComfyUI's annotated file names ("x.png [output]"): the suffix names the data folder the file is in.
# Its frontend writes them (the mask editor, "open in LoadImage"); folder_paths.annotated_filepath.
ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}


def split_annotated(name: str) -> tuple[str, str | None]:
    """("x.png", "output") for "x.png [output]"; (name, None) for a name without an annotation."""
    for suffix, kind in ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


@dataclass
class Folders:
    base: Path
    output: Path
    input: Path
    temp: Path
    user: Path
    custom_nodes: list[Path] = field(default_factory=list)
    models: dict[str, list[Path]] = field(default_factory=dict)
    workflows: Path | None = None  # example workflows offered by the canvas (read-only)

    @classmethod
    def create(
        cls,
        base_directory: str | Path | None = None,
        *,
        output_directory: str | Path | None = None,
        input_directory: str | Path | None = None,
        temp_directory: str | Path | None = None,
        user_directory: str | Path | None = None,
        models_directory: str | Path | None = None,
    ) -> Folders:
        base = Path(base_directory or os.getcwd()).resolve()
        models_root = Path(models_directory).resolve() if models_directory else base / "models"
        folders = cls(
            base=base,
            output=Path(output_directory).resolve() if output_directory else base / "output",
            input=Path(input_directory).resolve() if input_directory else base / "input",
            temp=Path(temp_directory).resolve() if temp_directory else base / "temp",
            user=Path(user_directory).resolve() if user_directory else base / "user",
            custom_nodes=[base / "custom_nodes"],
            workflows=base / "workflows",
        )
        for kind in MODEL_KINDS:
            folders.models[kind] = [models_root / kind]
        for kind, alias in _ALIASES.items():
            folders.models[kind].append(models_root / alias)
        return folders

    def create_directories(self) -> None:
        """Make the writable folders exist (called explicitly at start-up, never at import)."""
        for path in (self.output, self.input, self.temp, self.user):
            path.mkdir(parents=True, exist_ok=True)

    def add_model_path(self, kind: str, path: str | Path, *, first: bool = False) -> None:
        paths = self.models.setdefault(kind, [])
        resolved = Path(path).expanduser().resolve()
        if resolved not in paths:
            paths.insert(0, resolved) if first else paths.append(resolved)

    def load_extra_model_paths(self, config_path: str | Path) -> None:
        """Read ComfyUI's extra_model_paths.yaml: sections with an optional base_path and, per model kind,
        one or more folders (newline-separated), relative to base_path or to the YAML file."""
        import yaml  # transformers already depends on PyYAML

        config_path = Path(config_path)
        try:
            document = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read extra model paths config {config_path}: {exc}") from exc
        if not isinstance(document, dict):
            raise ValueError(f"{config_path}: expected sections of 'kind: path' entries")
        for section_name, section in document.items():
            if not isinstance(section, dict):
                raise ValueError(f"{config_path}: section {section_name!r} must map model kinds to folders")
            base = Path(os.path.expandvars(str(section.get("base_path", config_path.parent)))).expanduser()
            if not base.is_absolute():
                base = config_path.parent / base
            first = bool(section.get("is_default", False))
            for kind, value in section.items():
                if kind in ("base_path", "is_default") or value is None:
                    continue
                for line in str(value).splitlines():
                    if line.strip():
                        target = base / os.path.expandvars(line.strip())
                        self.add_model_path(str(kind), target, first=first)

    # -- files ------------------------------------------------------------------------------------

    def roots(self, kind: str) -> list[Path]:
        if kind == "input":
            return [self.input]
        if kind == "output":
            return [self.output]
        if kind == "temp":
            return [self.temp]
        if kind not in self.models:
            raise KeyError(f"unknown folder kind {kind!r}; known: {', '.join(sorted(self.models))}")
        return self.models[kind]

    def list_files(self, kind: str, extensions: Iterable[str] | None = None) -> list[str]:
        """Relative file names (with '/' separators) under the kind's folders, sorted, without duplicates."""
        if extensions is None:
            extensions = IMAGE_EXTENSIONS if kind in ("input", "output", "temp") else WEIGHT_EXTENSIONS
        wanted = tuple(e.lower() for e in extensions)
        names: set[str] = set()
        for root in self.roots(kind):
            if not root.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for filename in filenames:
                    if filename.lower().endswith(wanted) and not filename.startswith("."):
                        rel = Path(dirpath, filename).relative_to(root)
                        names.add(rel.as_posix())
        return sorted(names, key=str.lower)

    def resolve_choices(self, choices: FileChoices) -> list[str]:
        return self.list_files(choices.kind, choices.extensions)

    def full_path(self, kind: str, name: str, *, must_exist: bool = True) -> Path:
        """The file `name` of a folder kind. Refuses absolute names and names escaping the folder.

        In the data folders (input/output/temp), which requests can write to, the check is made after
        resolving symlinks. Model folders are the administrator's: a model file or sub-folder that is a
        symlink to another drive is followed (as ComfyUI users expect), but the name itself must still
        stay inside the folder.
        """
        if not name or "\x00" in name or "\\" in name:
            raise UnsafePathError(f"invalid file name {name!r}")
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise UnsafePathError(f"file name {name!r} must be relative to the {kind} folder, without '..'")
        roots = self.roots(kind)
        follow_links = kind not in DATA_KINDS
        for root in roots:
            lexical = root / relative
            candidate = lexical.resolve()
            if not follow_links and not _is_within(candidate, root.resolve()):
                raise UnsafePathError(f"file name {name!r} points outside the {kind} folder")
            if candidate.exists() or not must_exist:
                return lexical if follow_links else candidate
        searched = ", ".join(str(r) for r in roots)
        raise FileNotFoundError(f"{kind} file {name!r} not found (looked in: {searched})")

    def annotated_path(self, name: str, default_kind: str = "input") -> Path:
        """The file of a possibly annotated name ("x.png [temp]" is temp/x.png, "x.png" is in
        `default_kind`), confined to that folder like `full_path`."""
        bare, kind = split_annotated(name)
        return self.full_path(kind or default_kind, bare)


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
