"""Cond Set Default Combine, SetClipHooks and Create Hook Model as LoRA on tiny SD1 checkpoints, each against
the equivalent graph without hooks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

L, C, S, LO = builtin("loaders"), builtin("conditioning"), builtin("sampling"), builtin("lora")
HK, HC = builtin("hooks"), builtin("hooks_create")

FC1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks_cond_env")
    models = root / "models"
    write_tiny_checkpoint(models / "checkpoints" / "a.safetensors", "sd1", seed=1)
    write_tiny_checkpoint(models / "checkpoints" / "b.safetensors", "sd1", seed=2)
    g = torch.Generator().manual_seed(0)
    (models / "loras").mkdir(parents=True)
    save_file(
        {f"{FC1}.lora_up.weight": torch.randn(128, 2, generator=g), f"{FC1}.lora_down.weight": torch.randn(2, 32, generator=g)},
        models / "loras" / "te.safetensors",
    )  # fmt: skip
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    a = L.checkpoint_loader_simple(ckpt_name="a.safetensors", context=ctx)
    b = L.checkpoint_loader_simple(ckpt_name="b.safetensors", context=ctx)
    return ctx, a, b


def encode(clip, text):
    return C.clip_text_encode(text=text, clip=clip)[0]


def sample(ctx, model, pos, neg, *, cfg=4.0):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = S.ksampler(
        model=model, seed=5, steps=3, cfg=cfg, sampler_name="euler", scheduler="normal",
        positive=pos, negative=neg, latent_image=latent, context=ctx,
    )  # fmt: skip
    return out[0]["samples"]


def test_default_cond_fills_what_the_masked_cond_leaves(env):
    ctx, (model, clip, _), _ = env
    red, blue, neg = encode(clip, "red"), encode(clip, "blue"), encode(clip, "ugly")
    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1.0
    masked = C.conditioning_set_mask(conditioning=red, mask=left, strength=1.0, set_cond_area="default")[0]
    (with_default,) = HK.conditioning_set_default_combine(cond=masked, cond_DEFAULT=blue)
    assert with_default[-1][1]["default"] is True and "default" not in with_default[0][1]
    # The default entry weighs 1 - mask: the same as blue under the inverted mask.
    right = C.conditioning_set_mask(
        conditioning=blue, mask=1.0 - left, strength=1.0, set_cond_area="default"
    )[0]
    expected = sample(ctx, model, masked + right, neg)
    torch.testing.assert_close(sample(ctx, model, with_default, neg), expected, rtol=0, atol=1e-5)
    # Behind a full-frame entry nothing is left: the default entry is not used at all.
    (covered,) = HK.conditioning_set_default_combine(cond=red, cond_DEFAULT=blue)
    assert torch.equal(sample(ctx, model, covered, neg), sample(ctx, model, red, neg))
    pos2, neg2 = HK.pair_conditioning_set_default_combine(
        positive=red, negative=neg, positive_DEFAULT=blue, negative_DEFAULT=blue
    )
    assert [o.get("default") for _, o in pos2] == [None, True] and [o.get("default") for _, o in neg2] == [
        None,
        True,
    ]


def test_set_clip_hooks_patches_the_text_encoder_and_tags_the_conds(env):
    ctx, (_, clip, _), _ = env
    hooks = HC.create_hook_lora(
        lora_name="te.safetensors", strength_model=1.0, strength_clip=0.7, context=ctx
    )[0]
    (hooked_clip,) = HK.set_clip_hooks(clip=clip, apply_to_conds=True, schedule_clip=False, hooks=hooks)
    assert hooked_clip is not clip and clip.clip_hooks is None
    (cond,) = [encode(hooked_clip, "a cat")]
    assert cond[0][1]["hooks"] is hooks
    # The same as LoraLoader's CLIP at strength_clip (the model side untouched here).
    loaded = LO.lora_loader(
        model=None, clip=clip, lora_name="te.safetensors", strength_model=0.0, strength_clip=0.7, context=ctx
    ).values[1]
    torch.testing.assert_close(cond[0][0], encode(loaded, "a cat")[0][0], rtol=0, atol=1e-6)
    assert not torch.allclose(cond[0][0], encode(clip, "a cat")[0][0], atol=1e-4)
    (untagged,) = HK.set_clip_hooks(clip=clip, apply_to_conds=False, schedule_clip=False, hooks=hooks)
    assert "hooks" not in encode(untagged, "a cat")[0][1]
    assert HK.set_clip_hooks(clip=clip, apply_to_conds=True, schedule_clip=False) == (clip,)


def test_scheduled_clip_hooks_encode_one_entry_per_keyframe_range(env):
    ctx, (_, clip, _), _ = env
    hooks = HC.create_hook_lora(
        lora_name="te.safetensors", strength_model=1.0, strength_clip=1.0, context=ctx
    )[0]
    kf = HC.create_hook_keyframe(strength_mult=0.0, start_percent=0.0)[0]
    kf = HC.create_hook_keyframe(strength_mult=1.0, start_percent=0.4, prev_hook_kf=kf)[0]
    (hooks,) = HC.set_hook_keyframes(hooks=hooks, hook_kf=kf)
    (scheduled,) = HK.set_clip_hooks(clip=clip, apply_to_conds=True, schedule_clip=True, hooks=hooks)
    entries = encode(scheduled, "a cat")
    ranges = [(o["clip_start_percent"], o["clip_end_percent"]) for _, o in entries]
    assert ranges == [(0.0, 0.4), (1 * 0.4, 1.0)]
    # 0..40%: strength 0 (the plain encoding), 40%..100%: the LoRA at full strength.
    assert torch.equal(entries[0][0], encode(clip, "a cat")[0][0])
    (full,) = HK.set_clip_hooks(clip=clip, apply_to_conds=False, schedule_clip=False, hooks=hooks)
    torch.testing.assert_close(entries[1][0], encode(full, "a cat")[0][0], rtol=0, atol=1e-6)


def test_model_as_lora_hook_on_both_sides_samples_the_other_checkpoint(env):
    ctx, (model_a, clip, _), (model_b, _, _) = env
    pos, neg = encode(clip, "a house"), encode(clip, "dark")
    (hooks,) = HC.create_hook_model_as_lora_model_only(
        ckpt_name="b.safetensors", strength_model=1.0, context=ctx
    )
    hp, hn = HK.pair_conditioning_set_properties(
        positive_NEW=pos, negative_NEW=neg, strength=1.0, set_cond_area="default", hooks=hooks
    )
    got = sample(ctx, model_a, hp, hn)
    # W_a + (W_b - W_a) is W_b to float32 rounding (6e-8 here), which this random tiny UNet amplifies to
    # ~6e-4 over three steps; the distance to model A's result is hundreds of times that.
    torch.testing.assert_close(got, sample(ctx, model_b, pos, neg), rtol=0, atol=2e-3)
    assert float((got - sample(ctx, model_a, pos, neg)).abs().max()) > 0.1
    (half,) = HC.create_hook_model_as_lora(
        ckpt_name="b.safetensors", strength_model=0.0, strength_clip=0.5, context=ctx
    )
    assert half.hooks[0].clip_weights is not None
