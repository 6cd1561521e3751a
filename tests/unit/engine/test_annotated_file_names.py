"""ComfyUI's annotated file names ("x.png [output]") in image-loading combos: resolved in the folder the
annotation names, validated against that folder's listing, never escaping it."""

from __future__ import annotations

import pytest
from PIL import Image

from engine import errors as E
from engine.errors import UnsafePathError, WorkflowValidationError
from engine.folders import Folders, split_annotated
from engine.graph.api_format import parse_api_workflow
from engine.graph.validate import validate_workflow
from engine.runtime import build_runtime


@pytest.fixture
def folders(tmp_path):
    folders = Folders.create(tmp_path)
    folders.create_directories()
    for kind in ("input", "output", "temp"):
        Image.new("RGB", (2, 2), (10, 20, 30)).save(getattr(folders, kind) / f"in_{kind}.png")
    return folders


def _validate(folders, image: str, node_type: str = "LoadImage"):
    registry = build_runtime(folders, with_models=False).registry
    inputs = {"image": image} if node_type == "LoadImage" else {"image": image, "channel": "red"}
    prompt = {
        "1": {"class_type": node_type, "inputs": inputs},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1 if node_type == "LoadImage" else 0]}},
    }
    return validate_workflow(parse_api_workflow(prompt), registry)


def test_split_annotated_names():
    assert split_annotated("a b.png [output]") == ("a b.png", "output")
    assert split_annotated("sub/x.png [temp]") == ("sub/x.png", "temp")
    assert split_annotated("x.png [input]") == ("x.png", "input")
    assert split_annotated("x.png") == ("x.png", None)
    assert split_annotated("x.png [models]") == ("x.png [models]", None)


def test_annotated_path_resolves_in_the_named_folder(folders):
    assert folders.annotated_path("in_output.png [output]") == (folders.output / "in_output.png").resolve()
    assert folders.annotated_path("in_temp.png [temp]") == (folders.temp / "in_temp.png").resolve()
    assert folders.annotated_path("in_input.png") == (folders.input / "in_input.png").resolve()
    with pytest.raises(FileNotFoundError):
        folders.annotated_path("in_input.png [output]")


@pytest.mark.parametrize(
    "name", ["../input/in_input.png [output]", "/etc/passwd [temp]", "..\\x.png [input]"]
)
def test_annotated_names_never_escape_their_folder(folders, name):
    with pytest.raises(UnsafePathError):
        folders.annotated_path(name)


def test_annotated_symlink_out_of_the_output_folder_is_refused(folders):
    (folders.output / "link.png").symlink_to(folders.input / "in_input.png")
    with pytest.raises(UnsafePathError):
        folders.annotated_path("link.png [output]")


@pytest.mark.parametrize("node_type", ["LoadImage", "LoadImageMask"])
@pytest.mark.parametrize("name", ["in_output.png [output]", "in_temp.png [temp]", "in_input.png [input]"])
def test_load_image_nodes_accept_annotated_names(folders, node_type, name):
    validated = _validate(folders, name, node_type)
    assert validated.nodes["1"].constants["image"] == name


@pytest.mark.parametrize(
    "name",
    [
        "in_input.png [output]",  # not in the folder it names
        "../input/in_input.png [output]",  # escapes the named folder
        "in_output.png [models]",  # not an annotation ComfyUI knows
        "in_output.png",  # bare names stay in the input folder
    ],
)
def test_annotated_names_outside_the_named_folder_are_refused(folders, name):
    with pytest.raises(WorkflowValidationError) as caught:
        _validate(folders, name)
    assert [(i.code, i.node_id, i.input_name) for i in caught.value.issues] == [
        (E.VALUE_NOT_IN_LIST, "1", "image")
    ]


@pytest.mark.parametrize("name", ["in_output.png", "in_output.png [output]", "in_temp.png [temp]"])
def test_load_image_output_accepts_bare_and_annotated_names(folders, name):
    """LoadImageOutput lists the output folder; ComfyUI's templates save its value annotated
    ("x.png [output]"), which failed validation before (only input-folder combos took annotations)."""
    registry = build_runtime(folders, with_models=False).registry
    prompt = {
        "1": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    validated = validate_workflow(parse_api_workflow(prompt), registry)
    assert validated.nodes["1"].constants["image"] == name


def test_load_image_output_refuses_an_annotation_for_a_missing_file(folders):
    registry = build_runtime(folders, with_models=False).registry
    prompt = {
        "1": {"class_type": "LoadImageOutput", "inputs": {"image": "in_input.png [output]"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    with pytest.raises(WorkflowValidationError):
        validate_workflow(parse_api_workflow(prompt), registry)
