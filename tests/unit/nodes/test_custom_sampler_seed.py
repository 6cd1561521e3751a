"""SamplerCustom and SamplerCustomAdvanced hand their noise seed to the conditioning code, as KSampler does
(ComfyUI passes the sampler's seed to encode_adm: unCLIP's noise augmentation), on a tiny SD2.1-unCLIP-shaped
checkpoint whose ADM builder records the seed it is given."""

from __future__ import annotations

import pytest
import torch

from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.vision import write_unclip_checkpoint
from tests.unit.nodes.node_support import builtin, node_context, sampling_library

V, C, CS = builtin("vision_conditioning"), builtin("conditioning"), builtin("custom_sampling")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip_seed_env")
    write_unclip_checkpoint(root / "models" / "checkpoints" / "unclip.safetensors", seed=5)
    ctx, _ = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))
    model, clip, _, cv = V.unclip_checkpoint_loader("unclip.safetensors", context=ctx)
    (cond,) = C.clip_text_encode("a photo", clip)
    (neg,) = C.clip_text_encode("", clip)
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(6))
    (vision,) = V.clip_vision_encode(cv, image, "center")
    (positive,) = V.unclip_conditioning(cond, vision, 1.0, 0.2)
    return ctx, model, positive, neg


def recording(model):
    clone, seen = model.clone(), []
    inner = clone.adm_builder

    def builder(cond, width, height):
        seen.append(cond.get("seed"))
        return inner(cond, width, height)

    clone.adm_builder = builder
    return clone, seen


def inputs():
    sampler = sampling_library().sampler("euler")
    return sampler, torch.tensor([3.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}


def test_sampler_custom_hands_the_noise_seed_to_the_conditioning(env):
    ctx, model, positive, neg = env
    clone, seen = recording(model)
    sampler, sigmas, latent = inputs()
    CS.sampler_custom(clone, True, 1234, 4.0, positive, neg, sampler, sigmas, latent, context=ctx)
    assert seen and set(seen) == {1234}


def test_sampler_custom_advanced_hands_the_noise_seed_to_the_conditioning(env):
    ctx, model, positive, neg = env
    clone, seen = recording(model)
    sampler, sigmas, latent = inputs()
    (noise,) = CS.random_noise(noise_seed=77)
    (guider,) = CS.cfg_guider(model=clone, positive=positive, negative=neg, cfg=4.0)
    CS.sampler_custom_advanced(noise, guider, sampler, sigmas, latent, context=ctx)
    assert seen and set(seen) == {77}
