"""The dataset loaders, SaveLoRANode, LossGraphNode and the training nodes' combos and validation, without
training a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from engine.errors import WorkflowValidationError
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.graph.validate import validate_workflow
from engine.runtime import build_runtime
from engine.training import dataset
from engine.training.session import TrainedLora
from tests.unit.nodes.node_support import builtin, node_context

T = builtin("training")


def _image(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 0, 255 - value)).save(path)


def test_folder_items_captions_and_kohya_repeats(tmp_path):
    _image(tmp_path / "b.png", (8, 8), 10)
    _image(tmp_path / "a.jpg", (8, 8), 20)
    (tmp_path / "a.txt").write_text("  a caption \n")
    _image(tmp_path / "3_person" / "p.webp", (8, 8), 30)
    (tmp_path / "3_person" / "p.txt").write_text("person")
    _image(tmp_path / "misc" / "m.png", (8, 8), 40)
    (tmp_path / "notes.md").write_text("not an image")
    items = dataset.list_items(tmp_path)
    assert [(i.image.name, i.caption) for i in items] == [
        ("p.webp", "person"), ("p.webp", "person"), ("p.webp", "person"),
        ("a.jpg", "a caption"), ("b.png", ""), ("m.png", ""),
    ]  # fmt: skip


def test_resize_methods_bring_images_to_one_size(tmp_path):
    _image(tmp_path / "0.png", (8, 6), 200)
    _image(tmp_path / "1.png", (4, 4), 100)
    paths = [tmp_path / "0.png", tmp_path / "1.png"]
    with pytest.raises(dataset.DatasetError, match="1.png is 4x4, the dataset is 8x6"):
        dataset.load_images(paths, "None")
    for method in ("Stretch", "Crop", "Pad"):
        batch = dataset.load_images(paths, method)
        assert batch.shape == (2, 6, 8, 3) and batch.dtype == torch.float32
    crop = dataset.load_images(paths, "Crop")
    assert torch.all(crop[1, :, 4:] == 0) and torch.allclose(crop[1, 0, 0], torch.tensor([100, 0, 155]) / 255)
    pad = dataset.load_images(paths, "Pad")
    assert torch.all(pad[1, :, 0] == 0) and pad[1, 3, 4, 0] > 0  # centred, black bars left and right
    assert dataset.load_images(paths, "Stretch", 5, 5).shape == (2, 5, 5, 3)


def test_image_set_node_reads_an_input_subfolder_only(tmp_path):
    ctx, _ = node_context(folders=Folders.create(tmp_path))
    _image(tmp_path / "input" / "set" / "x.png", (4, 4), 0)
    (images,) = T.load_image_set_from_folder("set", context=ctx)
    assert images.shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match="sub-folder of the input folder"):
        T.load_image_set_from_folder("../..", context=ctx)


def test_save_lora_writes_kohya_file_with_metadata_into_models_loras(tmp_path):
    ctx, _ = node_context(folders=Folders.create(tmp_path))
    lora = TrainedLora({"lora_unet_x.lora_up.weight": torch.ones(2, 1)}, {"ss_steps": "12"}, 12)
    names = [T.save_lora(lora, "loras/mine", context=ctx, steps=12).ui["text"][0] for _ in range(2)]
    names.append(T.save_lora(lora, "elsewhere/mine", context=ctx).ui["text"][0])
    assert names == [
        "mine_12_steps_00001_.safetensors",
        "mine_12_steps_00002_.safetensors",
        "elsewhere/mine_00001_.safetensors",
    ]
    with safe_open(str(tmp_path / "models" / "loras" / names[0]), framework="pt") as f:
        assert f.metadata() == {"ss_steps": "12"} and torch.equal(
            f.get_tensor("lora_unet_x.lora_up.weight"), torch.ones(2, 1)
        )
    assert (tmp_path / "output" / "elsewhere" / "mine_00001_.safetensors").is_file()


def test_loss_graph_node_writes_the_curve_to_temp(tmp_path):
    ctx, _ = node_context(folders=Folders.create(tmp_path))
    out = T.loss_graph({"loss": [4.0, 2.0, 1.0, 0.5]}, "loss_graph", context=ctx)
    (entry,) = out.ui["images"]
    pixels = np.asarray(Image.open(tmp_path / "temp" / entry["filename"]))
    assert entry["type"] == "temp" and pixels.shape == (300, 500, 3)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    assert (
        blue[:, :250].any(axis=1).nonzero()[0].min() < blue[:, 250:].any(axis=1).nonzero()[0].min()
    )  # falls


def test_combos_list_input_folders_and_loras_and_lokr_is_refused_at_validation(tmp_path):
    (tmp_path / "input" / "faces").mkdir(parents=True)
    (tmp_path / "input" / "x.png").write_bytes(b"")
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "old.safetensors").write_bytes(b"")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "m.safetensors").write_bytes(b"")  # listed; never loaded
    registry = build_runtime(Folders.create(tmp_path), load_custom_nodes=False, with_models=False).registry
    info = registry.node_info("TrainLoraNode")["input"]["required"]["existing_lora"]
    assert info == [
        ["old.safetensors", "[None]"],
        {"default": "[None]", "tooltip": "A LoRA file to continue training."},
    ]
    assert registry.node_info("LoadImageSetFromFolderNode")["input"]["required"]["folder"][0] == ["faces"]
    inputs = {
        "model": ["2", 0], "latents": ["9", 0], "positive": ["3", 0], "batch_size": 1, "grad_accumulation_steps": 1,
        "steps": 1, "learning_rate": 0.001, "rank": 4, "optimizer": "AdamW", "loss_function": "MSE", "seed": 0,
        "training_dtype": "fp32", "lora_dtype": "fp32", "algorithm": "LoKr", "gradient_checkpointing": False,
        "existing_lora": "[None]",
    }  # fmt: skip
    prompt = {
        "1": {"class_type": "TrainLoraNode", "inputs": inputs},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["2", 1]}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    with pytest.raises(WorkflowValidationError) as failure:
        validate_workflow(parse_api_workflow(prompt), registry, targets=["1"])
    assert "algorithm LoKr cannot be trained yet: choose LoRA or LoHa" in str(failure.value)
