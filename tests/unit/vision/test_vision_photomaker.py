"""PhotoMaker on a tiny SDXL checkpoint with a tiny ID encoder in photomaker-v1.bin's layout: the trigger word
is dropped from the prompt and the class word's token is replaced by the fusion (written out by hand from the
file's weights) of its embedding with the image's identity embedding; other tokens and the pooled vector are
the plain prompt's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.api.models import ModelFileError
from engine.diffusion.vision.preprocess import clip_preprocess
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.factories.vision import photomaker_state_dict, write_photomaker
from tests.unit.nodes.node_support import builtin, node_context

V, L = builtin("vision_conditioning"), builtin("loaders")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("photomaker_env")
    write_tiny_checkpoint(root / "models" / "checkpoints" / "xl.safetensors", "sdxl", seed=1)
    write_photomaker(root / "models" / "photomaker" / "photomaker-v1.bin", second_dim=48, seed=2)
    (root / "models" / "photomaker" / "bad.bin").write_bytes(b"junk")
    ctx, _ = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))
    _, clip, _ = L.checkpoint_loader_simple("xl.safetensors", context=ctx)
    return ctx, clip


def _mlp(x, sd, p, residual):
    h = F.layer_norm(x, x.shape[-1:], sd[p + "layernorm.weight"], sd[p + "layernorm.bias"])
    h = F.gelu(h @ sd[p + "fc1.weight"].T + sd[p + "fc1.bias"]) @ sd[p + "fc2.weight"].T + sd[p + "fc2.bias"]
    return x + h if residual else h


def _fused_by_hand(sd, prompt_token, pooled):
    identity = torch.cat(
        [pooled @ sd["visual_projection.weight"].T, pooled @ sd["visual_projection_2.weight"].T], -1
    )
    h = _mlp(torch.cat([prompt_token, identity], -1), sd, "fuse_module.mlp1.", False) + prompt_token
    h = _mlp(h, sd, "fuse_module.mlp2.", True)
    return F.layer_norm(
        h, h.shape[-1:], sd["fuse_module.layer_norm.weight"], sd["fuse_module.layer_norm.bias"]
    )


def test_photomaker_encode_fuses_the_class_word(env):
    ctx, clip = env
    (pm,) = V.photomaker_loader("photomaker-v1.bin", context=ctx)
    image = torch.rand(2, 36, 30, 3, generator=torch.Generator().manual_seed(3))
    ((cond, opts),) = V.photomaker_encode(pm, image, clip, "photograph of man photomaker smiling")[0]
    plain, pooled = clip.encode("photograph of man smiling")
    assert cond.shape == plain.shape and torch.equal(opts["pooled_output"], pooled)
    # "photomaker" is word 4: token 3 (BOS, photograph, of, man) is fused, the others are the plain prompt's.
    others = [i for i in range(cond.shape[1]) if i != 3]
    assert torch.equal(cond[:, others], plain[:, others])
    sd = photomaker_state_dict(second_dim=48, seed=2)
    with torch.no_grad():
        tower = pm.module.tower[0]
        first = tower(clip_preprocess(image[:1], 28, crop=True)).pooled
    want = _fused_by_hand(sd, plain[0, 3], first[0])
    assert (cond[0, 3] - want).abs().max() <= 1e-4
    assert (cond[0, 3] - plain[0, 3]).abs().max() > 1e-2


def test_without_the_trigger_word_the_prompt_is_plain(env):
    ctx, clip = env
    (pm,) = V.photomaker_loader("photomaker-v1.bin", context=ctx)
    ((cond, opts),) = V.photomaker_encode(pm, torch.rand(1, 28, 28, 3), clip, "a portrait")[0]
    plain, pooled = clip.encode("a portrait")
    assert torch.equal(cond, plain) and torch.equal(opts["pooled_output"], pooled)


def test_bad_photomaker_file_is_named(env):
    ctx, _ = env
    with pytest.raises(ModelFileError, match="bad.bin"):
        V.photomaker_loader("bad.bin", context=ctx)
