"""Model merging nodes (ComfyUI's names and schemas): ModelMergeSimple, ModelMergeBlocks, ModelMergeAdd,
ModelMergeSubtract, the per-block ModelMergeSD1 / SD2 / SDXL, and CLIPMergeSimple / Add / Subtract.

A merge is a clone of the first model carrying the second model's weights as patches (nothing is copied;
see engine/handles/merging.py): `ratio * W1 + (1 - ratio) * W2` for the simple and block merges, `W1 + W2`
for add, `multiplier * (W1 - W2)` for subtract. Block merges take the ratio of the longest matching key
prefix (an input name such as "input_blocks.4."); weights under no listed prefix take the first ratio.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import model_files as mf

CATEGORY = "advanced/model_merging"
SPECIFIC = "advanced/model_merging/model_specific"


def _ratio(name: str) -> api.Input:
    return api.Float(name, 1.0, min=0.0, max=1.0, step=0.01)


def _multiplier() -> api.Input:
    return api.Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01)


_MODELS = [api.Input("model1", api.MODEL), api.Input("model2", api.MODEL)]
_CLIPS = [api.Input("clip1", api.CLIP), api.Input("clip2", api.CLIP)]


@api.node("ModelMergeSimple", category=CATEGORY, inputs=[*_MODELS, _ratio("ratio")], outputs=[api.MODEL])
def model_merge_simple(model1: Any, model2: Any, ratio: float):
    """ratio * model1 + (1 - ratio) * model2, weight by weight."""
    return (mf.merge(model1, model2, mf.ratio_strengths(ratio)),)


@api.node(
    "ModelMergeBlocks",
    category=CATEGORY,
    inputs=[*_MODELS, _ratio("input"), _ratio("middle"), _ratio("out")],
    outputs=[api.MODEL],
)
def model_merge_blocks(model1: Any, model2: Any, input: float, middle: float, out: float):
    """A ratio for the input blocks, the middle block and the output blocks (by key prefix)."""
    ratios = {"input": input, "middle": middle, "out": out}
    return (mf.merge(model1, model2, mf.block_strengths(ratios)),)


@api.node("ModelMergeSubtract", category=CATEGORY, inputs=[*_MODELS, _multiplier()], outputs=[api.MODEL])
def model_merge_subtract(model1: Any, model2: Any, multiplier: float):
    """multiplier * (model1 - model2): a difference to add elsewhere or to extract as a LoRA."""
    return (mf.merge(model1, model2, mf.subtract_strengths(multiplier)),)


@api.node("ModelMergeAdd", category=CATEGORY, inputs=_MODELS, outputs=[api.MODEL])
def model_merge_add(model1: Any, model2: Any):
    """model1 + model2 (model2 is usually a difference from ModelMergeSubtract)."""
    return (mf.merge(model1, model2, mf.add_strengths()),)


@api.node("CLIPMergeSimple", category=CATEGORY, inputs=[*_CLIPS, _ratio("ratio")], outputs=[api.CLIP])
def clip_merge_simple(clip1: Any, clip2: Any, ratio: float):
    """ratio * clip1 + (1 - ratio) * clip2 (position ids and logit scale stay clip1's)."""
    strengths = mf.ratio_strengths(ratio)
    return (mf.merge(clip1, clip2, strengths, skip=mf.CLIP_MERGE_SKIPPED_SUFFIXES),)


@api.node("CLIPMergeSubtract", category=CATEGORY, inputs=[*_CLIPS, _multiplier()], outputs=[api.CLIP])
def clip_merge_subtract(clip1: Any, clip2: Any, multiplier: float):
    """multiplier * (clip1 - clip2)."""
    strengths = mf.subtract_strengths(multiplier)
    return (mf.merge(clip1, clip2, strengths, skip=mf.CLIP_MERGE_SKIPPED_SUFFIXES),)


@api.node("CLIPMergeAdd", category=CATEGORY, inputs=_CLIPS, outputs=[api.CLIP])
def clip_merge_add(clip1: Any, clip2: Any):
    """clip1 + clip2."""
    strengths = mf.add_strengths()
    return (mf.merge(clip1, clip2, strengths, skip=mf.CLIP_MERGE_SKIPPED_SUFFIXES),)


# The per-block inputs of ComfyUI's model-specific merges, in its order (the first is the default ratio).
# SD1 and SD2 share the UNet's block structure (12 input blocks, 3 middle, 12 output); SDXL has 9 input and
# 9 output blocks and no trailing dots in its names.
def _unet_blocks(inputs: int, outputs: int, dot: str) -> list[str]:
    return [
        "time_embed.",
        "label_emb.",
        *(f"input_blocks.{i}{dot}" for i in range(inputs)),
        *(f"middle_block.{i}{dot}" for i in range(3)),
        *(f"output_blocks.{i}{dot}" for i in range(outputs)),
        "out.",
    ]


SD_BLOCKS = _unet_blocks(12, 12, ".")
SDXL_BLOCKS = _unet_blocks(9, 9, "")


def _block_merge_node(node_type: str, blocks: list[str]) -> api.NodeDefinition:
    def merge_blocks(model1: Any, model2: Any, **ratios: float):
        """A ratio per UNet block: ratio * model1 + (1 - ratio) * model2 for the weights under it."""
        ordered = {name: float(ratios[name]) for name in blocks}
        return (mf.merge(model1, model2, mf.block_strengths(ordered)),)

    return api.node(
        node_type,
        category=SPECIFIC,
        inputs=[*_MODELS, *(_ratio(name) for name in blocks)],
        outputs=[api.MODEL],
    )(merge_blocks)


model_merge_sd1 = _block_merge_node("ModelMergeSD1", SD_BLOCKS)
model_merge_sd2 = _block_merge_node("ModelMergeSD2", SD_BLOCKS)
model_merge_sdxl = _block_merge_node("ModelMergeSDXL", SDXL_BLOCKS)

NODES = [
    model_merge_simple,
    model_merge_blocks,
    model_merge_subtract,
    model_merge_add,
    clip_merge_simple,
    clip_merge_subtract,
    clip_merge_add,
    model_merge_sd1,
    model_merge_sd2,
    model_merge_sdxl,
]
