"""`folder_paths` over the runtime's folders: kinds and folders packs register at import time are seen
by diffgraph's own Folders (our file combos, model routes) and the other way round; ComfyUI's legacy
names, annotated names, save-path counters, and diffgraph's refusal of names that escape a folder."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from engine.errors import UnsafePathError
from engine.folders import Folders
from engine.runtime import build_runtime

# What IPAdapter_plus, Impact, AnimateDiff and GGUF do at import time (patterns, not their code).
REGISTERING_PACK = """
import os
import folder_paths

extra = os.path.join(folder_paths.models_dir, "ipadapter")
if "ipadapter" not in folder_paths.folder_names_and_paths:
    folder_paths.folder_names_and_paths["ipadapter"] = ([extra], folder_paths.supported_pt_extensions)
paths, _ = folder_paths.folder_names_and_paths["ipadapter"]
folder_paths.folder_names_and_paths["ipadapter"] = (paths, folder_paths.supported_pt_extensions)

folder_paths.folder_names_and_paths["loras"][0].append({extra_loras!r})
folder_paths.add_model_folder_path("checkpoints", {first_ckpt!r}, is_default=True)
folder_paths.folder_names_and_paths["embeddings"][1].add(".npz")

orig, _ = folder_paths.folder_names_and_paths["diffusion_models"]
folder_paths.folder_names_and_paths["unet_gguf"] = (orig, {{".gguf"}})
NODE_CLASS_MAPPINGS = {{}}
"""


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def loaded(tmp_path):
    """A runtime whose pack registered folders; returns (runtime, the folder_paths module it saw)."""
    extra_loras = tmp_path / "elsewhere" / "loras"
    first_ckpt = tmp_path / "fast_disk" / "checkpoints"
    pack = tmp_path / "custom_nodes" / "registering"
    pack.mkdir(parents=True)
    source = REGISTERING_PACK.format(extra_loras=str(extra_loras), first_ckpt=str(first_ckpt))
    (pack / "__init__.py").write_text(textwrap.dedent(source))
    runtime = build_runtime(Folders.create(tmp_path), with_models=False)
    record = runtime.plugins.get("registering")
    assert record.error is None, record.error
    return runtime, sys.modules["folder_paths"]


def test_a_kind_a_pack_registers_is_a_kind_of_the_runtime_folders(tmp_path, loaded):
    runtime, folder_paths = loaded
    model = touch(tmp_path / "models" / "ipadapter" / "sub" / "ip.safetensors")
    touch(tmp_path / "models" / "ipadapter" / "notes.txt")
    assert folder_paths.get_filename_list("ipadapter") == ["sub/ip.safetensors"]
    assert runtime.folders.list_files("ipadapter") == ["sub/ip.safetensors"]
    assert runtime.folders.full_path("ipadapter", "sub/ip.safetensors") == model
    assert folder_paths.get_full_path("ipadapter", "sub/ip.safetensors") == str(model)


def test_folders_packs_add_reach_the_built_in_combos(tmp_path, loaded):
    runtime, folder_paths = loaded
    touch(tmp_path / "elsewhere" / "loras" / "style.safetensors")
    touch(tmp_path / "fast_disk" / "checkpoints" / "fast.safetensors")
    assert "style.safetensors" in runtime.folders.list_files("loras")
    assert "style.safetensors" in folder_paths.get_filename_list("loras")
    # is_default puts the folder first, for ComfyUI and for our loaders alike
    assert folder_paths.get_folder_paths("checkpoints")[0] == str(tmp_path / "fast_disk" / "checkpoints")
    assert runtime.folders.roots("checkpoints")[0] == tmp_path / "fast_disk" / "checkpoints"
    assert runtime.folders.full_path("checkpoints", "fast.safetensors").is_file()


def test_extension_sets_stay_as_packs_changed_them(tmp_path, loaded):
    _, folder_paths = loaded
    touch(tmp_path / "models" / "embeddings" / "face.npz")
    assert ".npz" in folder_paths.folder_names_and_paths["embeddings"][1]
    assert "face.npz" in folder_paths.get_filename_list("embeddings")


def test_a_kind_sharing_another_kinds_list_follows_it(tmp_path, loaded):
    """ComfyUI-GGUF registers unet_gguf with diffusion_models' very list: a folder added to one later is
    a folder of both, in ComfyUI and here."""
    runtime, folder_paths = loaded
    touch(tmp_path / "models" / "unet" / "q4.gguf")
    touch(tmp_path / "models" / "unet" / "full.safetensors")
    assert folder_paths.get_filename_list("unet_gguf") == ["q4.gguf"]
    # found through the legacy name, whatever its extension (get_full_path does not filter)
    assert folder_paths.get_full_path("unet", "q4.gguf") == str(tmp_path / "models" / "unet" / "q4.gguf")
    later = tmp_path / "more_unets"
    touch(later / "q8.gguf")
    folder_paths.add_model_folder_path("diffusion_models", str(later))
    assert folder_paths.get_filename_list("unet_gguf") == ["q4.gguf", "q8.gguf"]
    assert later in runtime.folders.roots("unet_gguf")
    assert later in runtime.folders.roots("unet")  # diffgraph's legacy kind follows its canonical one


def test_legacy_names_and_folders_side_changes(tmp_path, loaded):
    runtime, folder_paths = loaded
    assert folder_paths.get_folder_paths("unet") == folder_paths.get_folder_paths("diffusion_models")
    touch(tmp_path / "models" / "clip" / "te.safetensors")
    assert folder_paths.get_filename_list("clip") == ["te.safetensors"]
    other = tmp_path / "vae_elsewhere"
    runtime.folders.add_model_path("vae", other)  # a change made on diffgraph's side
    assert str(other) in folder_paths.get_folder_paths("vae")
    assert str(other) in folder_paths.folder_names_and_paths["vae"][0]


def test_full_paths_missing_files_and_refused_names(tmp_path, loaded):
    _, folder_paths = loaded
    touch(tmp_path / "secret.safetensors")
    assert folder_paths.get_full_path("checkpoints", "missing.safetensors") is None
    assert folder_paths.get_full_path("no_such_kind", "x.safetensors") is None
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        folder_paths.get_full_path_or_raise("checkpoints", "missing.safetensors")
    for name in ("../../secret.safetensors", str(tmp_path / "secret.safetensors"), "a\\..\\b"):
        with pytest.raises(UnsafePathError):
            folder_paths.get_full_path("checkpoints", name)
    with pytest.raises(KeyError):
        folder_paths.get_filename_list("no_such_kind")


def test_annotated_names(tmp_path, loaded):
    runtime, folder_paths = loaded
    touch(runtime.folders.output / "shot.png")
    assert folder_paths.annotated_filepath("shot.png [output]") == ("shot.png", str(runtime.folders.output))
    assert folder_paths.annotated_filepath("shot.png") == ("shot.png", None)
    assert folder_paths.get_annotated_filepath("shot.png [output]") == str(
        runtime.folders.output / "shot.png"
    )
    assert folder_paths.get_annotated_filepath("a/b.png") == str(runtime.folders.input / "a" / "b.png")
    assert folder_paths.get_annotated_filepath("b.png [temp]") == str(runtime.folders.temp / "b.png")
    assert folder_paths.exists_annotated_filepath("shot.png [output]")
    assert not folder_paths.exists_annotated_filepath("shot.png [input]")
    with pytest.raises(UnsafePathError):
        folder_paths.get_annotated_filepath("../../etc/passwd [input]")
    assert not folder_paths.exists_annotated_filepath("../../etc/passwd [input]")  # invalid, not an error
    (runtime.folders.input / "link").symlink_to(tmp_path)  # a symlink out of input/ is refused too
    with pytest.raises(UnsafePathError):
        folder_paths.get_annotated_filepath("link/secret.safetensors")


def test_save_image_path_counters_and_confinement(loaded):
    runtime, folder_paths = loaded
    out = folder_paths.get_output_directory()
    assert out == str(runtime.folders.output)
    folder, name, counter, subfolder, prefix = folder_paths.get_save_image_path("shot", out, 64, 64)
    assert (folder, name, counter, subfolder, prefix) == (out + "/", "shot", 1, "", "shot")  # as ComfyUI
    for existing in ("shot_00001_.png", "shot_00007_.png", "shot_00009.png", "shotgun_00050_.png"):
        touch(Path(out) / existing)
    assert folder_paths.get_save_image_path("shot", out)[2] == 8
    folder, name, counter, subfolder, prefix = folder_paths.get_save_image_path(
        "run/%width%x%height%", out, 32, 16
    )
    assert (name, counter, subfolder, prefix) == ("32x16", 1, "run", "run/32x16")
    assert Path(folder) == runtime.folders.output / "run" and Path(folder).is_dir()
    with pytest.raises(UnsafePathError):
        folder_paths.get_save_image_path("../outside/shot", out)


def test_data_directories_are_the_runtime_folders(tmp_path, loaded):
    runtime, folder_paths = loaded
    assert folder_paths.output_directory == str(runtime.folders.output)
    assert folder_paths.get_directory_by_type("temp") == str(runtime.folders.temp)
    assert folder_paths.get_directory_by_type("models") is None
    (runtime.folders.input / "clips" / "day1").mkdir(parents=True)
    assert folder_paths.get_input_subfolders() == ["clips", "clips/day1"]
    folder_paths.set_output_directory(str(tmp_path / "renders"))
    assert runtime.folders.output == tmp_path / "renders"
    assert folder_paths.output_directory == str(tmp_path / "renders")
