"""Hooks on a tiny SD1 checkpoint: a hooked conditioning is sampled with the hook's LoRA patches at their
scheduled strength and the other conditioning without them (observed through the weights the UNet
actually holds at each model call), keyframes switch at the hand-computed step, and the results match
the equivalent plain graphs (LoraLoader, another checkpoint, masks)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.folders import Folders
from engine.handles.saving import patched_state_dict
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

L, C, S, LO = builtin("loaders"), builtin("conditioning"), builtin("sampling"), builtin("lora")
HK, HC = builtin("hooks"), builtin("hooks_create")

Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
FC1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks_env")
    models = root / "models"
    write_tiny_checkpoint(models / "checkpoints" / "a.safetensors", "sd1", seed=1)
    write_tiny_checkpoint(models / "checkpoints" / "b.safetensors", "sd1", seed=2)
    g = torch.Generator().manual_seed(0)
    unet = "lora_unet_" + Q.replace(".", "_")
    (models / "loras").mkdir(parents=True)
    save_file(
        {
            f"{unet}.lora_up.weight": torch.randn(32, 2, generator=g),
            f"{unet}.lora_down.weight": torch.randn(2, 32, generator=g),
            f"{FC1}.lora_up.weight": torch.randn(128, 2, generator=g),
            f"{FC1}.lora_down.weight": torch.randn(2, 32, generator=g),
        },
        models / "loras" / "l.safetensors",
    )
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    model, clip, _ = L.checkpoint_loader_simple(ckpt_name="a.safetensors", context=ctx)
    pos = C.clip_text_encode(text="a red cube", clip=clip)[0]
    neg = C.clip_text_encode(text="blurry", clip=clip)[0]
    return ctx, model, clip, pos, neg


def lora_hooks(ctx, strength_model=1.0, strength_clip=1.0):
    return HC.create_hook_lora(
        lora_name="l.safetensors", strength_model=strength_model, strength_clip=strength_clip, context=ctx
    )[0]


def sample(ctx, model, pos, neg, *, steps=4, cfg=5.0, seed=3):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = S.ksampler(
        model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
        positive=pos, negative=neg, latent_image=latent, context=ctx,
    )  # fmt: skip
    return out[0]["samples"]


def set_hooks(cond, hooks):
    return HK.conditioning_set_properties(cond_NEW=cond, strength=1.0, set_cond_area="default", hooks=hooks)[
        0
    ]


def watching(model):
    """A clone whose model calls record (sigma, cond_or_uncond, whether the UNet holds a patched Q)."""
    # The clone's own weight (the shared module may still hold another clone's patches right now).
    base = patched_state_dict(model)[f"{Q}.weight"]
    calls: list[tuple[float, list[int], bool]] = []

    def wrapper(apply_model, args):
        patched = not torch.equal(model.unet.get_submodule(Q).weight, base)
        calls.append((float(args["timestep"][0]), list(args["cond_or_uncond"]), patched))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m = model.clone()
    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


def test_hooked_lora_at_strength_zero_is_the_base_model(env):
    ctx, model, _, pos, neg = env
    kf = HC.create_hook_keyframe(strength_mult=0.0, start_percent=0.0)[0]
    (hooks,) = HC.set_hook_keyframes(hooks=lora_hooks(ctx), hook_kf=kf)
    base = sample(ctx, model, pos, neg)
    assert torch.equal(sample(ctx, model, set_hooks(pos, hooks), set_hooks(neg, hooks)), base)
    # At strength 1 on both sides it is LoraLoaderModelOnly; on the positive only it is neither. (One
    # group on both sides: the two run batched, as without hooks, so the results match to rounding.)
    both = lora_hooks(ctx)
    hooked = sample(ctx, model, set_hooks(pos, both), set_hooks(neg, both))
    loaded = LO.lora_loader_model_only(
        model=model, lora_name="l.safetensors", strength_model=1.0, context=ctx
    )
    torch.testing.assert_close(hooked, sample(ctx, loaded.values[0], pos, neg), rtol=0, atol=1e-5)
    assert not torch.allclose(hooked, base, atol=1e-3)
    one_side = sample(ctx, model, set_hooks(pos, lora_hooks(ctx)), neg)
    assert not torch.allclose(one_side, base, atol=1e-3) and not torch.allclose(one_side, hooked, atol=1e-3)


def test_hooks_on_one_cond_do_not_leak_to_the_other(env):
    ctx, model, _, pos, neg = env
    watched, calls = watching(model)
    sample(ctx, watched, set_hooks(pos, lora_hooks(ctx)), neg)
    assert len(calls) == 8  # 4 steps, the hooked positive and the plain negative in calls of their own
    assert all(patched == (sides == [0]) for _, sides, patched in calls), calls
    # Afterwards the model (and the base clone) hold their own weights again when used.
    assert torch.equal(patched_state_dict(model)[f"{Q}.weight"], patched_state_dict(watched)[f"{Q}.weight"])


def test_keyframes_switch_the_patch_at_the_hand_computed_step(env):
    ctx, model, _, pos, neg = env
    # Strength 0 from the start, 1 from 50% of the schedule on. SD1's sigma at 50% is 1.6156
    # (percent_to_sigma(0.5)); the 6-step "normal" schedule of the tiny SD1 model calls the model at
    # sigmas 14.61, 5.09, 2.28, 1.16, 0.57, 0.03 (read from the schedule), so calls 4..6 (the first
    # sigma <= 1.6156 on) carry the LoRA and calls 1..3 do not.
    kf = HC.create_hook_keyframe(strength_mult=0.0, start_percent=0.0)[0]
    kf = HC.create_hook_keyframe(strength_mult=1.0, start_percent=0.5, prev_hook_kf=kf)[0]
    (hooks,) = HC.set_hook_keyframes(hooks=lora_hooks(ctx), hook_kf=kf)
    watched, calls = watching(model)
    sample(ctx, watched, set_hooks(pos, hooks), None, steps=6, cfg=1.0)
    sigmas = [round(s, 2) for s, _, _ in calls]
    assert sigmas == [14.61, 5.09, 2.28, 1.16, 0.57, 0.03]
    assert [p for _, _, p in calls] == [False, False, False, True, True, True]


def test_guarantee_steps_hold_a_keyframe_for_one_step():
    from engine.handles.hooks import HookKeyframe, HookKeyframes, _KeyframeState

    def p2s(p: float) -> float:
        return 999999999.9 if p <= 0 else 10.0 * (1.0 - p)

    kfs = HookKeyframes((HookKeyframe(1.0, 0.0), HookKeyframe(0.0, 0.3), HookKeyframe(0.5, 0.31)))
    state = _KeyframeState(kfs, p2s)
    got = []
    for sigma in (10.0, 8.0, 6.0, 5.0):  # 7.0 and 6.9 (the two later starts) are passed at once at 6.0
        state.advance(sigma, max_sigma=10.0)
        got.append(state.strength)
    # The 0.3 keyframe guarantees one step, so it holds at 6.0 although 0.31 also started; then 0.31.
    assert got == [1.0, 1.0, 0.0, 0.5]
    no_guarantee = HookKeyframes(tuple(HookKeyframe(k.strength, k.start_percent, 0) for k in kfs.keyframes))
    state = _KeyframeState(no_guarantee, p2s)
    for sigma in (10.0, 8.0, 6.0):
        state.advance(sigma, max_sigma=10.0)
    assert state.strength == 0.5  # without guarantees the scan runs through to the last started one
