"""ModelMergeFlux1 / ModelMergeSD3_2B / ModelMergeSD35_Large on tiny FLUX.1 and SD3 transformers: every merged
weight against the hand-computed per-block blend of the two files."""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.models import flux, mmdit
from engine.folders import Folders
from engine.handles.saving import patched_state_dict
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.flow_checkpoints import write_flow_file
from tests.unit.nodes.node_support import builtin, node_context

L, MF = builtin("loaders"), builtin("model_merging_flow")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_flow")
    dm = root / "models" / "diffusion_models"
    files = {}
    for name, family, config, seed in (
        ("f1", "flux", flux.TINY, 1), ("f2", "flux", flux.TINY, 2),
        ("s1", "sd3", mmdit.TINY_X, 3), ("s2", "sd3", mmdit.TINY_X, 4),
    ):  # fmt: skip
        files[name] = write_flow_file(
            dm / f"{name}.safetensors", family, config=config, layout="diffusion_model", seed=seed
        )
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    models = {name: L.unet_loader(f"{name}.safetensors", "default", context=ctx)[0] for name in files}
    return models, files


def ratios(blocks, **set_to):
    out = {name: 1.0 for name in blocks}
    out.update({k.replace("_", "."): v for k, v in set_to.items()})
    return out


def check(merged, w1, w2, ratio_of):
    # The MODEL's module holds the transformer under "model." (the sampling adapter around it).
    got = {k.removeprefix("model."): v for k, v in patched_state_dict(merged).items()}
    assert set(got) == set(w1)
    for key, value in got.items():
        r = ratio_of(key)
        torch.testing.assert_close(value, r * w1[key] + (1 - r) * w2[key], rtol=1e-6, atol=1e-6, msg=key)


def test_flux1_merge_blends_per_block(env):
    models, files = env
    r = ratios(MF.FLUX1_BLOCKS)
    r.update({"img_in.": 0.3, "double_blocks.0.": 0.25, "single_blocks.1.": 0.0, "final_layer.": 0.5})
    (merged,) = MF.model_merge_flux1(models["f1"], models["f2"], **r)

    def ratio_of(key: str) -> float:
        # Every FLUX.1 weight is under exactly one listed block ("guidance_in" has no dot, as in ComfyUI).
        (prefix,) = [p for p in MF.FLUX1_BLOCKS if key.startswith(p)]
        return r[prefix]

    check(merged, files["f1"], files["f2"], ratio_of)


@pytest.mark.parametrize("node", ["model_merge_sd3_2b", "model_merge_sd35_large"])
def test_sd3_merges_blend_per_joint_block(env, node):
    models, files = env
    blocks = MF.SD3_2B_BLOCKS if node.endswith("2b") else MF.SD35_LARGE_BLOCKS
    r = ratios(blocks)
    r.update({"pos_embed.": 0.9, "joint_blocks.1.": 0.2, "joint_blocks.2.": 0.0, "x_embedder.": 0.6})
    (merged,) = getattr(MF, node)(models["s1"], models["s2"], **r)

    def ratio_of(key: str) -> float:
        for prefix in ("joint_blocks.1.", "joint_blocks.2.", "x_embedder."):
            if key.startswith(prefix):
                return r[prefix]
        # "pos_embed" (a tensor, no dot after it) and unlisted weights take the first ratio.
        return (
            1.0
            if key.startswith(
                ("context_embedder.", "y_embedder.", "t_embedder.", "joint_blocks.0.", "final_layer.")
            )
            else 0.9
        )

    check(merged, files["s1"], files["s2"], ratio_of)
