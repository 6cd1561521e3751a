"""ComfyUI's per-block merges for the transformer families diffgraph loads: ModelMergeSD3_2B (24 joint
blocks), ModelMergeSD35_Large (38) and ModelMergeFlux1 (19 double, 38 single blocks), with ComfyUI's
input names (key prefixes of the diffusion model's weights, in its order; the first is also the ratio of
weights under no listed prefix). Each is `ratio * model1 + (1 - ratio) * model2` per block, as weight
patches on a clone of model1 (nodes/model_merging.py, engine/handles/merging.py). Blocks a smaller model
lacks (an SD3.5 Medium merged with the 2B node) simply match no weight, as in ComfyUI.

ModelMergeAuraflow is left out: AuraFlow models do not load in diffgraph.
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import model_files as mf

from .model_merging import _MODELS, SPECIFIC, _ratio

# The transformer sits under "model." in the MODEL's module (the sampling adapter around it); ComfyUI's
# block names are relative to the transformer itself.
_ADAPTER = "model."

_SD3_EMBEDDERS = ["pos_embed.", "x_embedder.", "context_embedder.", "y_embedder.", "t_embedder."]


def _sd3_blocks(joint: int) -> list[str]:
    return [*_SD3_EMBEDDERS, *(f"joint_blocks.{i}." for i in range(joint)), "final_layer."]


SD3_2B_BLOCKS = _sd3_blocks(24)
SD35_LARGE_BLOCKS = _sd3_blocks(38)
FLUX1_BLOCKS = [
    *("img_in.", "time_in.", "guidance_in", "vector_in.", "txt_in."),
    *(f"double_blocks.{i}." for i in range(19)),
    *(f"single_blocks.{i}." for i in range(38)),
    "final_layer.",
]


def _block_merge_node(node_type: str, blocks: list[str]) -> api.NodeDefinition:
    def merge_blocks(model1: Any, model2: Any, **ratios: float):
        """A ratio per transformer block: ratio * model1 + (1 - ratio) * model2 for the weights under it."""
        by_block = mf.block_strengths({name: float(ratios[name]) for name in blocks})
        return (mf.merge(model1, model2, lambda key: by_block(key.removeprefix(_ADAPTER))),)

    return api.node(
        node_type,
        category=SPECIFIC,
        inputs=[*_MODELS, *(_ratio(name) for name in blocks)],
        outputs=[api.MODEL],
    )(merge_blocks)


model_merge_sd3_2b = _block_merge_node("ModelMergeSD3_2B", SD3_2B_BLOCKS)
model_merge_sd35_large = _block_merge_node("ModelMergeSD35_Large", SD35_LARGE_BLOCKS)
model_merge_flux1 = _block_merge_node("ModelMergeFlux1", FLUX1_BLOCKS)

NODES = [model_merge_sd3_2b, model_merge_sd35_large, model_merge_flux1]
