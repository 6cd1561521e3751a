"""LoRA training nodes with ComfyUI's names, inputs and outputs (comfy_extras/nodes_train.py):
LoadImageSetFromFolderNode, LoadImageTextSetFromFolderNode, TrainLoraNode, LoraModelLoader, SaveLoRANode,
LossGraphNode. The work is done in engine.training; these nodes glue it to the graph.

Differences from ComfyUI, on purpose: the LoRA is written in kohya's key layout with ``ss_*`` metadata
(ComfyUI writes its internal names, which only ComfyUI reads); SaveLoRANode writes a prefix starting with
``loras/`` into the first models/loras folder, so LoraLoader lists the file at once (ComfyUI writes it
under output/loras/); an interrupt during training stops it early and the graph goes on with the steps
done (see docs/training.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from engine import api
from engine.api import images as imageio

_STRENGTH = {"min": -100.0, "max": 100.0, "step": 0.01}
_RESIZE = ["None", "Stretch", "Crop", "Pad"]
_SIZE = {"min": -1, "max": 10000, "step": 1}
_FOLDERS = api.RuntimeChoices("input_folders")
_LORAS_OR_NONE = api.RuntimeChoices("loras_or_none")
_NO_LORA = "[None]"


def _dataset_folder(context: api.ExecutionContext, folder: str) -> Path:
    root = Path(context.folders.input).resolve()
    path = (root / folder).resolve()
    if folder in ("", ".") or not path.is_relative_to(root):
        raise ValueError(f"dataset folder {folder!r} must be a sub-folder of the input folder {root}")
    return path


@api.node(
    "LoadImageSetFromFolderNode",
    category="loaders",
    display_name="Load Image Dataset from Folder",
    inputs=[
        api.Combo("folder", _FOLDERS, tooltip="The folder (under input/) to load images from."),
        api.Combo("resize_method", _RESIZE, "None", optional=True),
    ],
    outputs=[api.Output(api.IMAGE)],
    experimental=True,
)
def load_image_set_from_folder(folder: str, context: api.ExecutionContext, resize_method: str = "None"):
    """All images of an input sub-folder as one IMAGE batch (for training)."""
    from engine.api import training

    items = training.list_items(_dataset_folder(context, folder))
    return (training.load_images([i.image for i in items], resize_method),)


@api.node(
    "LoadImageTextSetFromFolderNode",
    category="loaders",
    display_name="Load Image and Text Dataset from Folder",
    inputs=[
        api.Combo("folder", _FOLDERS, tooltip="The folder (under input/) to load images from."),
        api.Input("clip", api.CLIP, tooltip="The CLIP model used for encoding the captions."),
        api.Combo("resize_method", _RESIZE, "None", optional=True),
        api.Int("width", -1, **_SIZE, optional=True, tooltip="Width to resize to; -1: the first image's."),
        api.Int("height", -1, **_SIZE, optional=True, tooltip="Height to resize to; -1: the first image's."),
    ],
    outputs=[api.Output(api.IMAGE), api.Output(api.CONDITIONING)],
    experimental=True,
)
def load_image_text_set_from_folder(
    folder: str,
    clip: Any,
    context: api.ExecutionContext,
    resize_method: str = "None",
    width: int = -1,
    height: int = -1,
):
    """Images of an input sub-folder and their captions (``name.txt`` beside ``name.png``; none: an empty
    caption), encoded with `clip`: one CONDITIONING entry per image."""
    from engine.api import training

    if clip is None:
        raise ValueError("clip input is empty: connect a CLIP (the checkpoint has no text encoder?)")
    items = training.list_items(_dataset_folder(context, folder))
    w, h = (width if width > 0 else None), (height if height > 0 else None)
    images = training.load_images([i.image for i in items], resize_method, w, h)
    encoded: dict[str, list[Any]] = {}
    conditioning = []
    for item in items:
        if item.caption not in encoded:
            encoded[item.caption] = clip.encode_conditioning(item.caption)
        conditioning.extend(encoded[item.caption])
    return (images, conditioning)


def _check_train(algorithm: str = "LoRA") -> bool | str:
    # At validation time, before any model loads (the declaration keeps ComfyUI's four choices).
    if algorithm in ("LoKr", "OFT"):
        return f"algorithm {algorithm} cannot be trained yet: choose LoRA or LoHa"
    return True


def _spec_and_config(kw: dict[str, Any], context: api.ExecutionContext) -> tuple[Any, Any]:
    from engine.api.training import DTYPES, LoraSpec, TrainConfig

    existing = kw["existing_lora"]
    path = None if existing == _NO_LORA else Path(context.folders.full_path("loras", existing))
    spec = LoraSpec(kw["algorithm"], kw["rank"], DTYPES[kw["lora_dtype"]], path)
    config = TrainConfig(
        steps=kw["steps"], batch_size=kw["batch_size"], grad_accumulation=kw["grad_accumulation_steps"],
        learning_rate=kw["learning_rate"], optimizer=kw["optimizer"], loss=kw["loss_function"],
        seed=kw["seed"], training_dtype=DTYPES[kw["training_dtype"]],
        gradient_checkpointing=kw["gradient_checkpointing"],
    )  # fmt: skip
    return spec, config


@api.node(
    "TrainLoraNode",
    category="training",
    display_name="Train LoRA",
    inputs=[
        api.Input("model", api.MODEL, tooltip="The model to train the LoRA on."),
        api.Input("latents", api.LATENT, tooltip="The latents of the training images."),
        api.Input("positive", api.CONDITIONING, tooltip="One conditioning for all images or one per image."),
        api.Int("batch_size", 1, min=1, max=10000, step=1),
        api.Int("grad_accumulation_steps", 1, min=1, max=1024, step=1),
        api.Int("steps", 16, min=1, max=100000, step=None),
        api.Float("learning_rate", 0.0005, min=1e-07, max=1.0, step=1e-06),
        api.Int("rank", 8, min=1, max=128, step=None),
        api.Combo("optimizer", ["AdamW", "Adam", "SGD", "RMSprop"], "AdamW"),
        api.Combo("loss_function", ["MSE", "L1", "Huber", "SmoothL1"], "MSE"),
        api.Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF, step=None),
        api.Combo("training_dtype", ["bf16", "fp32"], "bf16"),
        api.Combo("lora_dtype", ["bf16", "fp32"], "bf16"),
        api.Combo("algorithm", ["LoRA", "LoHa", "LoKr", "OFT"], "LoRA"),
        api.Boolean("gradient_checkpointing", True),
        api.Combo("existing_lora", _LORAS_OR_NONE, _NO_LORA, tooltip="A LoRA file to continue training."),
    ],
    outputs=[
        api.Output(api.MODEL, "model_with_lora"),
        api.Output(api.LORA_MODEL, "lora"),
        api.Output(api.LOSS_MAP, "loss"),
        api.Output(api.INT, "steps"),
    ],
    validate=_check_train,
    experimental=True,
)
def train_lora_node(model: Any, latents: Any, positive: Any, context: api.ExecutionContext, **kw: Any):
    """Train a LoRA on the model from latents and their conditioning; the model comes back with it applied.
    Progress (with the loss curve as the preview) goes to the progress bar; an interrupt stops training
    and the graph continues with the steps done."""
    from engine.api.training import apply_trained, draw_loss_graph, train_lora

    spec, config = _spec_and_config(kw, context)
    losses: list[float] = []

    def report(step: int, total: int, loss: float) -> None:
        losses.append(loss)
        context.progress(step, total, preview=lambda: draw_loss_graph(losses))

    lora, result = train_lora(model, latents, positive, config, spec, report)
    if result.interrupted:
        context.request_interrupt(False)  # the interrupt ended training; keep what it learned
    return (apply_trained(model, lora, 1.0), lora, {"loss": list(result.losses)}, lora.steps)


@api.node(
    "LoraModelLoader",
    category="loaders",
    display_name="Load LoRA Model",
    inputs=[
        api.Input("model", api.MODEL, tooltip="The diffusion model the LoRA will be applied to."),
        api.Input("lora", api.LORA_MODEL, tooltip="The LoRA from Train LoRA."),
        api.Float("strength_model", 1.0, **_STRENGTH),
    ],
    outputs=[api.Output(api.MODEL)],
    experimental=True,
)
def lora_model_loader(model: Any, lora: Any, strength_model: float):
    """Apply trained LoRA weights (a LORA_MODEL) to the model in memory."""
    from engine.api.training import apply_trained

    return (apply_trained(model, lora, strength_model),)


def _lora_target(context: api.ExecutionContext, prefix: str) -> tuple[Path, str]:
    """(root folder, prefix inside it): "loras/..." goes into the first LoRA folder, anything else into
    the output folder (ComfyUI's place)."""
    head, _, rest = prefix.replace("\\", "/").partition("/")
    if head == "loras" and rest:
        root = Path(context.folders.roots("loras")[0])
        root.mkdir(parents=True, exist_ok=True)
        return root, rest
    return Path(context.folders.output), prefix


def _next_counter(folder: Path, filename: str) -> int:
    """One past the highest counter of `<filename>[_<steps>_steps]_<counter>_.safetensors` in `folder`
    (the image counter would read the step count as the counter)."""
    pattern = re.compile(rf"{re.escape(filename)}(?:_\d+_steps)?_(\d+)_\.safetensors")
    found = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return max(found, default=0) + 1


@api.node(
    "SaveLoRANode",
    category="loaders",
    display_name="Save LoRA Weights",
    inputs=[
        api.Input("lora", api.LORA_MODEL, tooltip="The LoRA to save."),
        api.String("prefix", "loras/ComfyUI_trained_lora"),
        api.Input("steps", api.INT, optional=True, force_input=True),
    ],
    output_node=True,
    experimental=True,
)
def save_lora(lora: Any, prefix: str, context: api.ExecutionContext, steps: int | None = None):
    """Write the LoRA as ``<prefix>[_<steps>_steps]_<counter>_.safetensors`` in kohya's layout."""
    from safetensors.torch import save_file

    root, inner = _lora_target(context, prefix)
    target = imageio.save_image_path(inner, root)
    stem = f"{target.filename}_{steps}_steps" if steps is not None else target.filename
    path = target.folder / f"{stem}_{_next_counter(target.folder, target.filename):05}_.safetensors"
    metadata = {str(k): str(v) for k, v in getattr(lora, "metadata", {}).items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in lora.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, str(path), metadata=metadata or None)
    return api.NodeOutput(ui={"text": [str(path.relative_to(root))]})


@api.node(
    "LossGraphNode",
    category="training",
    display_name="Plot Loss Graph",
    inputs=[
        api.Input("loss", api.LOSS_MAP, default={}),
        api.String("filename_prefix", "loss_graph"),
    ],
    output_node=True,
    hidden={"prompt": api.HIDDEN_PROMPT, "extra_pnginfo": api.HIDDEN_EXTRA_PNGINFO},
    experimental=True,
)
def loss_graph(
    loss: Any,
    filename_prefix: str,
    context: api.ExecutionContext,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Plot the loss per training step as a picture in temp/, shown on the node."""
    from engine.api.training import loss_graph_array

    pixels = loss_graph_array(list(loss.get("loss", [])) if isinstance(loss, dict) else [])
    target = imageio.save_image_path(filename_prefix, context.folders.temp, pixels.shape[1], pixels.shape[0])
    name = target.file_name()
    text = imageio.png_text_chunks(prompt, extra_pnginfo if isinstance(extra_pnginfo, dict) else None)
    imageio.save_png(target.folder / name, pixels, text)
    return api.NodeOutput(ui={"images": [{"filename": name, "subfolder": target.subfolder, "type": "temp"}]})


NODES = [
    load_image_set_from_folder,
    load_image_text_set_from_folder,
    train_lora_node,
    lora_model_loader,
    save_lora,
    loss_graph,
]
