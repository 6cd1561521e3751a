"""A classic pack attaches hooks the way ComfyUI packs do (comfy.hooks.create_hook_lora,
HookKeyframeGroup, set_hooks_for_conditioning): the workflow's KSampler applies the hooked LoRA exactly as
diffgraph's own CreateHookLora + ConditioningSetProperties do, and a keyframe at strength 0 turns it off."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.graph.api_format import parse_api_workflow
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.compat.env_packs import runtime_with_pack

PACK = """
import comfy.hooks
import comfy.utils
import folder_paths


class AttachLoraHook:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "attach"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "strength": ("FLOAT", {"default": 1.0}),
                             "keyframe_strength": ("FLOAT", {"default": 1.0})}}

    def attach(self, conditioning, strength, keyframe_strength):
        lora = comfy.utils.load_torch_file(folder_paths.get_full_path("loras", "l.safetensors"), safe_load=True)
        hooks = comfy.hooks.create_hook_lora(lora, strength, strength)
        keyframes = comfy.hooks.HookKeyframeGroup()
        keyframes.add(comfy.hooks.HookKeyframe(keyframe_strength))
        hooks.set_keyframes_on_hooks(keyframes)
        return (comfy.hooks.set_hooks_for_conditioning(conditioning, hooks),)


NODE_CLASS_MAPPINGS = {"AttachLoraHook": AttachLoraHook}
"""

Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks_root")
    models = root / "models"
    write_tiny_checkpoint(models / "checkpoints" / "tiny.safetensors", "sd1", seed=3)
    g = torch.Generator().manual_seed(0)
    unet = "lora_unet_" + Q.replace(".", "_")
    (models / "loras").mkdir(parents=True)
    lora = {
        f"{unet}.lora_up.weight": torch.randn(32, 2, generator=g),
        f"{unet}.lora_down.weight": torch.randn(2, 32, generator=g),
    }
    save_file(lora, models / "loras" / "l.safetensors")
    return runtime_with_pack(root, "hookpack", PACK, with_models=True)


def sample(runtime, hook: str | None, keyframe_strength: float = 1.0) -> torch.Tensor:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    positive = ["2", 0]
    if hook == "pack":
        inputs = {"conditioning": positive, "strength": 1.0, "keyframe_strength": keyframe_strength}
        prompt["5"] = {"class_type": "AttachLoraHook", "inputs": inputs}
        positive = ["5", 0]
    elif hook == "native":
        lora = {"lora_name": "l.safetensors", "strength_model": 1.0, "strength_clip": 1.0}
        prompt["6"] = {"class_type": "CreateHookLora", "inputs": lora}
        props = {"cond_NEW": positive, "strength": 1.0, "set_cond_area": "default", "hooks": ["6", 0]}
        prompt["5"] = {"class_type": "ConditioningSetProperties", "inputs": props}
        positive = ["5", 0]
    inputs = {
        "model": ["1", 0],
        "seed": 1,
        "steps": 3,
        "cfg": 5.0,
        "sampler_name": "euler",
        "scheduler": "normal",
    }
    inputs |= {"positive": positive, "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}
    prompt["9"] = {"class_type": "KSampler", "inputs": inputs}
    result = runtime.executor.run(parse_api_workflow(prompt), targets=["9"])
    assert result.ok, [str(e) for e in result.errors]
    return result.results["9"].outputs[0][0]["samples"]


def test_a_pack_attached_lora_hook_samples_like_the_native_nodes(runtime) -> None:
    plain = sample(runtime, None)
    pack = sample(runtime, "pack")
    assert not torch.allclose(pack, plain, atol=1e-4)
    assert torch.equal(pack, sample(runtime, "native"))
    # Strength 0: the base model; the hooked positive runs in its own batch, so equal up to rounding (the
    # random model's latents reach ~300 after 3 steps at cfg 5: batch-1 and batch-2 kernels differ by
    # ~1e-3 there, 0.9e-3 with torch's BLAS and 1.2e-3 with oneDNN's packed convolutions).
    off = sample(runtime, "pack", keyframe_strength=0.0)
    torch.testing.assert_close(off, plain, rtol=1e-5, atol=3e-3)
    assert (off - plain).abs().max() < (pack - plain).abs().max() / 100


def test_pack_hook_groups_convert_with_their_identity_and_schedule(runtime) -> None:
    import comfy.hooks as hooks  # importable once the runtime loaded a pack

    from engine.handles import hooks as engine_hooks

    group = hooks.create_hook_lora({}, 0.5, 0.25)
    kf = hooks.HookKeyframeGroup()
    kf.add(hooks.HookKeyframe(0.2, start_percent=0.5, guarantee_steps=2))
    group.set_keyframes_on_hooks(kf)
    cond = hooks.set_hooks_for_conditioning([[torch.zeros(1, 2, 3), {}]], group)
    # Appending the same hook again (a clone shares its hook_ref) keeps one hook.
    again = hooks.set_hooks_for_conditioning(cond, group.clone())
    converted = again[0][1]["hooks"]
    assert isinstance(converted, engine_hooks.HookGroup) and len(converted) == 1
    (hook,) = converted.hooks
    assert (hook.strength_model, hook.strength_clip) == (0.5, 0.25)
    assert hook.keyframes.keyframes == (engine_hooks.HookKeyframe(0.2, 0.5, 2),)
    other = hooks.HookGroup()
    other.add(hooks.Hook(hooks.EnumHookType.ObjectPatch))
    with pytest.raises(NotImplementedError, match="object_patch"):
        hooks.set_hooks_for_conditioning(cond, other)
