"""LoRA nodes: LoraLoader and LoraLoaderModelOnly (ComfyUI's names, inputs and defaults).

The LoRA's patches go onto clones of the MODEL / CLIP handles; the shared base weights are patched only
while a node uses the model and restored exactly afterwards. Keys of the file that matched nothing
("lora key not loaded") are shown in the node's UI output as text, not silently dropped.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import models

_STRENGTH = {"min": -100.0, "max": 100.0, "step": 0.01}


def _report(report: Any) -> dict[str, Any]:
    return {"text": [report.summary()]}


@api.node(
    "LoraLoader",
    category="loaders",
    display_name="Load LoRA",
    inputs=[
        api.Input("model", api.MODEL, tooltip="The diffusion model the LoRA will be applied to."),
        api.Input("clip", api.CLIP, tooltip="The CLIP model the LoRA will be applied to."),
        api.Combo("lora_name", api.FileChoices("loras"), tooltip="The LoRA file, from models/loras."),
        api.Float("strength_model", 1.0, **_STRENGTH, tooltip="How strongly to modify the diffusion model."),
        api.Float("strength_clip", 1.0, **_STRENGTH, tooltip="How strongly to modify the CLIP model."),
    ],
    outputs=[api.Output(api.MODEL), api.Output(api.CLIP)],
)
def lora_loader(
    model: Any,
    clip: Any,
    lora_name: str,
    strength_model: float,
    strength_clip: float,
    context: api.ExecutionContext,
):
    """Apply a LoRA / LyCORIS file to the model and text encoder (kohya, diffusers/PEFT, LoHa, LoKr, diffs)."""
    if strength_model == 0 and strength_clip == 0:
        return (model, clip)
    path = context.folders.full_path("loras", lora_name)
    new_model, new_clip, report = models.apply_lora(path, model, clip, strength_model, strength_clip)
    return api.NodeOutput(new_model, new_clip, ui=_report(report))


@api.node(
    "LoraLoaderModelOnly",
    category="loaders",
    display_name="LoraLoaderModelOnly",
    inputs=[
        api.Input("model", api.MODEL),
        api.Combo("lora_name", api.FileChoices("loras")),
        api.Float("strength_model", 1.0, **_STRENGTH),
    ],
    outputs=[api.Output(api.MODEL)],
)
def lora_loader_model_only(model: Any, lora_name: str, strength_model: float, context: api.ExecutionContext):
    """Apply only the diffusion-model part of a LoRA; its text-encoder keys are reported as not loaded."""
    if strength_model == 0:
        return (model,)
    path = context.folders.full_path("loras", lora_name)
    new_model, _, report = models.apply_lora(path, model, None, strength_model, 0.0)
    return api.NodeOutput(new_model, ui=_report(report))


NODES = [lora_loader, lora_loader_model_only]
