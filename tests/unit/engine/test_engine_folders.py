"""Folder configuration: model kinds, extra model paths, and refusal of paths outside the folders."""

from __future__ import annotations

import pytest

from engine.errors import UnsafePathError
from engine.folders import Folders


def test_full_path_refuses_escapes(tmp_path):
    folders = Folders.create(tmp_path)
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "x.safetensors").write_bytes(b"")
    assert (
        folders.full_path("loras", "x.safetensors")
        == (tmp_path / "models" / "loras" / "x.safetensors").resolve()
    )
    for bad in ("../secret", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(UnsafePathError):
            folders.full_path("loras", bad)
    with pytest.raises(FileNotFoundError, match="loras file 'missing.pt' not found"):
        folders.full_path("loras", "missing.pt")


def test_symlink_escape_is_refused_in_data_folders(tmp_path):
    folders = Folders.create(tmp_path)
    folders.create_directories()
    (tmp_path / "secret.png").write_bytes(b"")
    (folders.input / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(UnsafePathError):
        folders.full_path("input", "link.png")
    with pytest.raises(UnsafePathError):
        folders.full_path("input", "sub\\..\\..\\secret.png")


def test_symlinked_model_files_are_followed(tmp_path):
    """Model folders often link to another drive; the name must still stay inside the folder."""
    folders = Folders.create(tmp_path)
    (tmp_path / "models" / "vae").mkdir(parents=True)
    (tmp_path / "elsewhere.safetensors").write_bytes(b"")
    (tmp_path / "models" / "vae" / "link.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    assert (
        folders.full_path("vae", "link.safetensors").resolve()
        == (tmp_path / "elsewhere.safetensors").resolve()
    )
    with pytest.raises(UnsafePathError):
        folders.full_path("vae", "../elsewhere.safetensors")


def test_extra_model_paths_yaml(tmp_path):
    other = tmp_path / "other_ui"
    (other / "models" / "Stable-diffusion").mkdir(parents=True)
    (other / "models" / "Stable-diffusion" / "old.safetensors").write_bytes(b"")
    (other / "models" / "Lora").mkdir(parents=True)
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(
        f"a111:\n  base_path: {other}\n  checkpoints: models/Stable-diffusion\n  loras: |\n    models/Lora\n    models/LyCORIS\n"
    )
    folders = Folders.create(tmp_path / "base")
    folders.load_extra_model_paths(config)
    assert "old.safetensors" in folders.list_files("checkpoints")
    assert (other / "models" / "LyCORIS").resolve() in folders.models["loras"]


def test_diffusion_models_alias_lists_unet_folder(tmp_path):
    folders = Folders.create(tmp_path)
    (tmp_path / "models" / "unet").mkdir(parents=True)
    (tmp_path / "models" / "unet" / "u.safetensors").write_bytes(b"")
    assert folders.list_files("diffusion_models") == ["u.safetensors"]
