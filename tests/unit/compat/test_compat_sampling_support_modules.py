"""The smaller ComfyUI modules packs import for sampling: comfy.k_diffusion.sampling (schedules, noise
samplers, diffgraph's samplers in the k-diffusion convention), comfy.hooks / comfy.conds data types,
comfy.sd1_clip's prompt weights, and the dequantizing state-dict reader behind load_diffusion_model_state_dict."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torchsde

from engine.comfy_compat.sd_bridge import plain_weights
from engine.folders import Folders
from engine.runtime import build_runtime


@pytest.fixture
def env(tmp_path):
    """A runtime without models; its ComfyUI modules by name."""
    build_runtime(Folders.create(tmp_path), with_models=False)
    return importlib.import_module


def test_k_diffusion_schedules_follow_their_formulas(env):
    k = env("comfy.k_diffusion.sampling")
    n, lo, hi = 5, 0.03, 14.6
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    karras = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    assert torch.allclose(
        k.get_sigmas_karras(n, lo, hi).double(), torch.cat([karras, torch.zeros(1)]), rtol=1e-6
    )
    exponential = torch.exp(torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64))
    assert torch.allclose(
        k.get_sigmas_exponential(n, lo, hi).double(), torch.cat([exponential, torch.zeros(1)])
    )
    # rho = 1 makes the polyexponential schedule the exponential one.
    assert torch.allclose(
        k.get_sigmas_polyexponential(n, lo, hi, rho=1.0), k.get_sigmas_exponential(n, lo, hi)
    )
    down, up = k.get_ancestral_step(2.0, 1.0, eta=1.0)
    assert math.isclose(up, math.sqrt(1.0 * (4.0 - 1.0) / 4.0)) and math.isclose(down**2 + up**2, 1.0)
    x, denoised = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    assert torch.equal(k.to_d(x, torch.tensor([2.0, 4.0]), denoised)[:, 0, 0, 0], torch.tensor([0.5, 0.25]))


def test_noise_samplers_draw_what_comfyui_draws(env):
    k = env("comfy.k_diffusion.sampling")
    x = torch.zeros(2, 4, 3, 3)
    noise = k.default_noise_sampler(x, seed=21)
    generator = torch.Generator().manual_seed(21)
    first, second = torch.randn(x.shape, generator=generator), torch.randn(x.shape, generator=generator)
    assert torch.equal(noise(1.0, 0.5), first) and torch.equal(noise(0.5, 0.1), second)
    # The Brownian sampler: torchsde's tree over [sigma_min, sigma_max], increments normalised by sqrt(dt).
    sampler = k.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=5, cpu=True)
    tree = torchsde.BrownianTree(torch.tensor(0.1), torch.zeros_like(x), torch.tensor(10.0), entropy=5)
    expected = tree(torch.tensor(2.0), torch.tensor(3.0)) / 1.0
    assert torch.allclose(sampler(torch.tensor(3.0), torch.tensor(2.0)), -expected, atol=1e-6)
    assert torch.allclose(k.BatchedBrownianTree(x, 0.1, 10.0, seed=5)(2.0, 3.0), expected, atol=1e-6)


def test_builtin_samplers_in_the_k_diffusion_convention(env):
    """sample_euler(model, x, sigmas, extra_args, callback) runs diffgraph's euler: model(x, sigma,
    **extra_args) is the denoiser, the callback gets ComfyUI's dict; a toy D(x) = x/2 checks the steps."""
    k = env("comfy.k_diffusion.sampling")
    calls = []

    def model(x, sigma, **extra):
        calls.append(sorted(extra))
        return x * 0.5

    steps = []
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
    x = torch.full((1, 1, 2, 2), 3.0)
    out = k.sample_euler(model, x, sigmas, extra_args={"seed": 1, "model_options": {}}, callback=steps.append)
    expected = x.clone()
    for s, sn in ((4.0, 2.0), (2.0, 1.0), (1.0, 0.0)):
        expected = expected + (expected - expected * 0.5) / s * (sn - s)
    assert torch.allclose(out, expected)
    assert [d["i"] for d in steps] == [0, 1, 2] and set(steps[0]) == {
        "x",
        "i",
        "sigma",
        "sigma_hat",
        "denoised",
    }
    assert calls[0] == ["model_options", "seed"]
    with pytest.raises(AttributeError):
        k.sample_no_such_sampler  # noqa: B018 - the lookup itself is the test


def test_hooks_conds_and_prompt_weights(env):
    hooks = env("comfy.hooks")
    a, b = hooks.WeightHook(), hooks.WeightHook(strength_model=0.5)
    first, second = hooks.HookGroup(), hooks.HookGroup()
    first.add(a)
    second.add(b)
    second.add(a)
    combined = hooks.HookGroup.combine_all_hooks([first, None, second])
    assert len(combined) == 2 and combined.contains(a) and combined.contains(b)
    assert hooks.HookGroup.combine_all_hooks([None]) is None
    keyframes = hooks.HookKeyframeGroup()
    keyframes.add(hooks.HookKeyframe(0.3, start_percent=0.5))
    keyframes.add(hooks.HookKeyframe(0.9, start_percent=0.0))
    assert keyframes.strength == 0.9 and [k.start_percent for k in keyframes.clone().keyframes] == [0.0, 0.5]
    assert (
        hooks.set_hooks_for_conditioning([], first) == []
    )  # attaching works (tests/unit/compat/test_compat_hooks.py)
    with pytest.raises(NotImplementedError, match="hook"):
        hooks.load_hook_lora_for_models(None, None, {}, 1.0, 1.0)

    conds = env("comfy.conds")
    short, long = conds.CONDCrossAttn(torch.ones(1, 2, 3)), conds.CONDCrossAttn(torch.zeros(1, 4, 3))
    assert short.can_concat(long)
    joined = short.concat([long])
    assert joined.shape == (2, 4, 3) and torch.equal(joined[0], torch.ones(4, 3))
    assert conds.CONDRegular(torch.ones(1, 2)).process_cond(3).cond.shape == (3, 2)

    sd1_clip = env("comfy.sd1_clip")
    assert sd1_clip.token_weights("a (red:1.5) ((cat))", 1.0) == [
        ("a ", 1.0),
        ("red", 1.5),
        (" ", 1.0),
        ("cat", pytest.approx(1.21)),
    ]
    text = sd1_clip.escape_important("a \\(b\\)")
    assert sd1_clip.unescape_important(sd1_clip.token_weights(text, 1.0)[0][0]) == "a (b)"


class PackQuantizedTensor(torch.Tensor):
    """What a quantizing pack (ComfyUI-GGUF) hands over: raw values plus its own type tag and real shape."""

    tensor_type: str = "halved"
    tensor_shape: tuple[int, ...] = ()


class PackOps:
    """A pack's op classes: `Linear.get_weight` dequantizes with settings kept on the class."""

    class Linear:
        dequant_dtype = None
        patch_dtype = None

        def get_weight(self, tensor, dtype):
            return (tensor.as_subclass(torch.Tensor) * 2.0).reshape(tensor.tensor_shape).to(dtype)


def test_quantized_state_dicts_are_dequantized_with_the_packs_ops():
    raw = torch.arange(6, dtype=torch.float16).as_subclass(PackQuantizedTensor)
    raw.tensor_shape = (2, 3)
    plain = torch.ones(3)
    weights = plain_weights({"q": raw, "p": plain}, PackOps)
    assert type(weights["q"]) is torch.Tensor and weights["q"].dtype == torch.float32
    assert torch.equal(weights["q"], torch.arange(6, dtype=torch.float32).reshape(2, 3) * 2)
    assert weights["p"] is plain


class Movable:
    def __init__(self, where: str = "cpu") -> None:
        self.where = where

    def to(self, target):
        return Movable(str(target))


def test_model_detection_prefix_and_casting_patches(env):
    sd = env("comfy.sd")
    keys = [f"model.diffusion_model.block{i}.weight" for i in range(6)] + ["first_stage_model.x"]
    assert sd.model_detection.unet_prefix_from_state_dict(keys) == "model.diffusion_model."
    assert sd.model_detection.unet_prefix_from_state_dict(["model.a"]) == "model."
    samplers = env("comfy.samplers")
    options = {
        "patches": {"attn1_patch": [Movable()]},
        "patches_replace": {"attn2": {("input", 1): Movable()}},
    }
    samplers.cast_transformer_options(options, device="meta")
    assert options["patches"]["attn1_patch"][0].where == "meta"
    assert options["patches_replace"]["attn2"][("input", 1)].where == "meta"
