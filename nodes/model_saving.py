"""Model saving nodes (ComfyUI's names and schemas): CheckpointSave, ModelSave, CLIPSave, VAESave and LoraSave.

Files go under the output folder as `<filename_prefix>_<counter:05>_.safetensors` with ComfyUI's counter rule
(one past the highest existing number for that prefix) and its key layouts (engine/handles/saving.py), so
both ComfyUI and diffgraph load them. The metadata is ComfyUI's: the API graph as JSON under `prompt`
(an empty string when there is none), each extra_pnginfo entry (the UI `workflow`) as JSON under its own
name, and for checkpoints the modelspec keys and `modelspec.predict_key`.
"""

from __future__ import annotations

import json
from typing import Any

from engine import api
from engine.api import images as imageio
from engine.api import model_files as mf

CATEGORY = "advanced/model_merging"
_HIDDEN = {"prompt": api.HIDDEN_PROMPT, "extra_pnginfo": api.HIDDEN_EXTRA_PNGINFO}
# CLIPSave writes one file per text-encoder tower, in ComfyUI's order of its tower names.
_TOWER_ORDER = ("clip_l", "clip_g", "clip_h")


def _workflow_metadata(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    metadata = {"prompt": json.dumps(prompt) if prompt is not None else ""}
    if isinstance(extra_pnginfo, dict):
        metadata.update({key: json.dumps(value) for key, value in extra_pnginfo.items()})
    return metadata


def _target(context: api.ExecutionContext, filename_prefix: str) -> tuple[Any, str, dict[str, str]]:
    """(path to write, "<filename> <counter>" title, the UI entry naming the file)."""
    where = imageio.save_image_path(filename_prefix, context.folders.output)
    name = f"{where.filename}_{where.counter:05}_.safetensors"
    ui = {"filename": name, "subfolder": where.subfolder, "type": "output"}
    return where.folder / name, f"{where.filename} {where.counter}", ui


def _save_model(
    context: api.ExecutionContext,
    filename_prefix: str,
    model: Any,
    clip: Any,
    vae: Any,
    prompt: Any,
    extra: Any,
) -> dict[str, Any]:
    path, title, ui = _target(context, filename_prefix)
    metadata = mf.checkpoint_metadata(model, title)
    metadata.update(_workflow_metadata(prompt, extra))
    mf.save_safetensors(path, mf.checkpoint_state_dict(model, clip, vae), metadata)
    return {"models": [ui]}


@api.node(
    "CheckpointSave",
    category=CATEGORY,
    display_name="Save Checkpoint",
    inputs=[
        api.Input("model", api.MODEL),
        api.Input("clip", api.CLIP),
        api.Input("vae", api.VAE),
        api.String("filename_prefix", "checkpoints/ComfyUI"),
    ],
    output_node=True,
    hidden=_HIDDEN,
)
def checkpoint_save(
    model: Any,
    clip: Any,
    vae: Any,
    filename_prefix: str,
    context: api.ExecutionContext,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Write model, text encoder and VAE (with their patches, e.g. merges, baked in) as one checkpoint."""
    return api.NodeOutput(ui=_save_model(context, filename_prefix, model, clip, vae, prompt, extra_pnginfo))


@api.node(
    "ModelSave",
    category=CATEGORY,
    inputs=[api.Input("model", api.MODEL), api.String("filename_prefix", "diffusion_models/ComfyUI")],
    output_node=True,
    hidden=_HIDDEN,
)
def model_save(
    model: Any,
    filename_prefix: str,
    context: api.ExecutionContext,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Write the diffusion model alone (keys under model.diffusion_model., as UNETLoader reads them)."""
    return api.NodeOutput(ui=_save_model(context, filename_prefix, model, None, None, prompt, extra_pnginfo))


@api.node(
    "CLIPSave",
    category=CATEGORY,
    inputs=[api.Input("clip", api.CLIP), api.String("filename_prefix", "clip/ComfyUI")],
    output_node=True,
    hidden=_HIDDEN,
)
def clip_save(
    clip: Any,
    filename_prefix: str,
    context: api.ExecutionContext,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """One file per text-encoder tower, `<prefix>_clip_l_...` etc., in Hugging Face CLIP layout."""
    metadata = {"format": "pt", **_workflow_metadata(prompt, extra_pnginfo)}
    towers = mf.clip_file_state_dicts(clip)
    written = []
    for tower in sorted(
        towers, key=lambda t: _TOWER_ORDER.index(t) if t in _TOWER_ORDER else len(_TOWER_ORDER)
    ):
        path, _, ui = _target(context, f"{filename_prefix}_{tower}")
        mf.save_safetensors(path, towers[tower], metadata)
        written.append(ui)
    return api.NodeOutput(ui={"models": written})


@api.node(
    "VAESave",
    category=CATEGORY,
    inputs=[api.Input("vae", api.VAE), api.String("filename_prefix", "vae/ComfyUI_vae")],
    output_node=True,
    hidden=_HIDDEN,
)
def vae_save(
    vae: Any,
    filename_prefix: str,
    context: api.ExecutionContext,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Write the VAE in the LDM layout (encoder.*, decoder.*, quant_conv...), as VAELoader reads it."""
    path, _, ui = _target(context, filename_prefix)
    mf.save_safetensors(path, mf.vae_state_dict(vae), _workflow_metadata(prompt, extra_pnginfo))
    return api.NodeOutput(ui={"models": [ui]})


@api.node(
    "LoraSave",
    category="_for_testing",
    display_name="Extract and Save Lora",
    inputs=[
        # ComfyUI's newer node API publishes multiline: false explicitly.
        api.String("filename_prefix", "loras/ComfyUI_extracted_lora", extra={"multiline": False}),
        api.Int("rank", 8, min=1, max=4096, step=1),
        api.Combo("lora_type", list(mf.LORA_TYPES)),
        api.Boolean("bias_diff", True),
        api.Input(
            "model_diff",
            api.MODEL,
            optional=True,
            tooltip="The ModelSubtract output to be converted to a lora.",
        ),
        api.Input(
            "text_encoder_diff",
            api.CLIP,
            optional=True,
            tooltip="The CLIPSubtract output to be converted to a lora.",
        ),
    ],
    output_node=True,
    hidden=_HIDDEN,
    experimental=True,
)
def lora_save(
    filename_prefix: str,
    rank: int,
    lora_type: str,
    bias_diff: bool,
    context: api.ExecutionContext,
    model_diff: Any = None,
    text_encoder_diff: Any = None,
    prompt: Any = None,
    extra_pnginfo: Any = None,
):
    """Factor a model / text-encoder difference into a LoRA of `rank` by SVD (or store the full
    difference) and write it under loras/, where LoraLoader finds it after a refresh."""
    if model_diff is None and text_encoder_diff is None:
        return api.NodeOutput(ui={"models": []})  # ComfyUI writes nothing either
    tensors: dict[str, Any] = {}
    if model_diff is not None:
        tensors.update(mf.model_lora(model_diff, rank, lora_type, bias_diff))
    if text_encoder_diff is not None:
        tensors.update(mf.clip_lora(text_encoder_diff, rank, lora_type, bias_diff))
    path, _, ui = _target(context, filename_prefix)
    mf.save_safetensors(path, tensors, None)  # ComfyUI writes LoRAs without metadata
    return api.NodeOutput(ui={"models": [ui]})


NODES = [checkpoint_save, model_save, clip_save, vae_save, lora_save]
