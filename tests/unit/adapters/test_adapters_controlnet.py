"""ControlNet / T2I-Adapter application: strength, step range, chaining, hint fitting, loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import engine.diffusion.checkpoints.loader as loader
import tests.factories.checkpoints as synthetic
from engine.diffusion.checkpoints.control import build_controlnet, build_t2i_adapter, is_t2i_adapter
from engine.diffusion.checkpoints.io import read_state_dict
from engine.diffusion.models.control_apply import ControlApplication, fit_hint
from engine.diffusion.models.controlnet import ControlNetModel
from engine.diffusion.models.t2i_adapter import T2IAdapter
from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.ksampler import sample
from engine.diffusion.sampling.model_sampling import model_sampling_for
from engine.runtime import sampling_library


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    path = synthetic.write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "sd1.safetensors", "sd1", seed=5)
    return loader.load_checkpoint(path)


@pytest.fixture(scope="module")
def cnet(sd1):
    return _randomise(ControlNetModel(sd1.unet.config), 3)


def _run(sd1, control, steps=3):
    """KSampler run; the control goes on both sides as ControlNetApplyAdvanced puts it (so positive and
    negative still share one batched UNet call, as in the plain run)."""
    model = DiffusionModel(sd1.unet, model_sampling_for("eps"))
    latent = torch.zeros(1, 4, 8, 8)
    lib = sampling_library()
    ctx, _ = sd1.text_encoder.encode("a cat")
    neg, _ = sd1.text_encoder.encode("")
    with torch.no_grad():
        return sample(
            model,
            None,
            steps,
            5.0,
            "euler",
            "normal",
            [[ctx, control]],
            [[neg, control]],
            latent,
            seed=7,
            samplers=lib.samplers,
            schedulers=lib.schedulers,
        )


@pytest.mark.slow
def test_strength_zero_is_exactly_plain_and_one_changes(sd1, cnet):
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    plain = _run(sd1, {})
    zero = _run(sd1, {"control": ControlApplication(cnet, hint, strength=0.0)})
    one = _run(sd1, {"control": ControlApplication(cnet, hint, strength=1.0)})
    assert torch.equal(plain, zero)
    assert (one - plain).abs().max() > 1e-3


def test_step_range_chain_and_strength_scaling(sd1, cnet):
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ctx = torch.randn(1, 77, sd1.unet.config.context_dim)
    ms = model_sampling_for("eps")
    hi, lo = torch.tensor([ms.percent_to_sigma(0.1)]), torch.tensor([ms.percent_to_sigma(0.9)])
    ranged = ControlApplication(cnet, hint, start_percent=0.5, end_percent=1.0)
    assert ranged.get_control(x, hi, ctx, None) is None  # early step: not active yet
    late = ranged.get_control(x, lo, ctx, None)
    assert late is not None and len(late["output"]) == len(sd1.unet.input_blocks)
    # The residuals are what the model computes for the scaled input and the timestep.
    with torch.no_grad():
        raw = cnet(ms.calculate_input(lo, x), ms.model_timestep(lo).float(), ctx, hint)
    torch.testing.assert_close(late["middle"][0], raw["middle"][0])
    half = ControlApplication(cnet, hint, strength=0.5)
    chained = ControlApplication(cnet, hint, strength=0.25, previous=half)
    with torch.no_grad():
        c = chained.get_control(x, lo, ctx, None)
    for a, b in zip(c["output"], raw["output"], strict=True):
        torch.testing.assert_close(a, 0.75 * b, rtol=1e-5, atol=1e-6)
    assert len(chained.chain()) == 2


def test_fit_hint_center_crops_then_resizes():
    img = torch.zeros(1, 1, 10, 20)
    img[:, :, :, 5:15] = 1.0  # the centre square of a 2:1 image
    out = fit_hint(img, 16, 16)
    assert out.shape == (1, 1, 16, 16) and bool((out == 1.0).all())


def test_build_from_files_original_prefixed_and_errors(tmp_path, cnet):
    sd = {f"control_model.{k}": v for k, v in cnet.state_dict().items()}
    save_file(sd, tmp_path / "cn.safetensors")
    built = build_controlnet(read_state_dict(tmp_path / "cn.safetensors"), num_heads=8)
    assert built.config.model_channels == cnet.config.model_channels
    x, hint, ctx = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 64, 64), torch.randn(1, 3, 32)
    with torch.no_grad():
        a, b = built(x, 5.0, ctx, hint), cnet(x, 5.0, ctx, hint)
    assert torch.equal(a["middle"][0], b["middle"][0])
    with pytest.raises(ValueError, match="not a ControlNet"):
        build_controlnet({"foo.weight": torch.zeros(1)})


@pytest.mark.slow
@pytest.mark.parametrize("xl", [False, True])
def test_t2i_adapter_levels_and_diffusers_layout(xl):
    ch = (32, 64, 128, 128)
    cin = 3 * (256 if xl else 64)
    ad = _randomise(T2IAdapter(cin, ch, xl=xl), 4)
    assert is_t2i_adapter(ad.state_dict())
    hint = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        out = ad(hint)
    feats = ad.features(hint)
    if xl:
        # SDXL: input blocks 3, 5, 8 get levels 0..2 (popped from the end), the middle block level 3.
        order = out["input"][::-1]
        assert [i for i, f in enumerate(order) if f is not None] == [3, 5, 8]
        assert out["middle"][0] is not None and out["middle"][0].shape == feats[3].shape
        assert [f.shape[-1] for f in feats] == [16, 16, 8, 8]
    else:
        order = out["input"][::-1]
        assert [i for i, f in enumerate(order) if f is not None] == [2, 5, 8, 11]
        assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]
    # diffusers layout (adapter.body.I.resnets.J.) loads to the same model.
    diff = {}
    for k, v in ad.state_dict().items():
        parts = k.split(".")
        if parts[0] == "body":
            n = int(parts[1])
            rest = ".".join(parts[2:])
            if rest.startswith("in_conv") or rest.startswith("down_opt"):
                diff[f"adapter.body.{n // 2}.{rest}"] = v
            else:
                diff[f"adapter.body.{n // 2}.resnets.{n % 2}.{rest}"] = v
        else:
            diff["adapter." + k] = v
    rebuilt = build_t2i_adapter(diff)
    with torch.no_grad():
        again = rebuilt(hint)
    assert all(
        (a is None and b is None) or torch.equal(a, b)
        for a, b in zip(again["input"], out["input"], strict=True)
    )


class _ContextSpy:
    """Wraps a ControlApplication and records the cross-attention context each call gets."""

    def __init__(self, inner):
        self.inner, self.contexts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_control(self, x, sigma, context, y):
        self.contexts.append(context)
        return self.inner.get_control(x, sigma, context, y)


def _run_sides(sd1, positive, negative):
    """One KSampler run with separate options for the positive and the negative entry."""
    model = DiffusionModel(sd1.unet, model_sampling_for("eps"))
    ctx, _ = sd1.text_encoder.encode("a cat")
    neg, _ = sd1.text_encoder.encode("")
    lib = sampling_library()
    with torch.no_grad():
        return sample(
            model, None, 2, 5.0, "euler", "normal", [[ctx, positive]], [[neg, negative]],
            torch.zeros(1, 4, 8, 8), seed=7, samplers=lib.samplers, schedulers=lib.schedulers,
        )  # fmt: skip


@pytest.mark.slow
def test_controlnet_prompt_of_clip_text_encode_controlnet(sd1, cnet):
    """CLIPTextEncodeControlnet's "cross_attn_controlnet" is the ControlNet's context for that entry (the
    UNet keeps the entry's own prompt), as in ComfyUI; before, the ControlNet always saw the entry's prompt."""
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ctx, _ = sd1.text_encoder.encode("a cat")
    dog, _ = sd1.text_encoder.encode("a dog")
    neg, _ = sd1.text_encoder.encode("")
    control = ControlApplication(cnet, hint)
    plain = _run_sides(sd1, {"control": control}, {"control": control})
    same = _run_sides(sd1, {"control": control, "cross_attn_controlnet": ctx}, {"control": control})
    other = _run_sides(sd1, {"control": control, "cross_attn_controlnet": dog}, {"control": control})
    assert torch.equal(plain, same)
    assert (other - plain).abs().max() > 1e-4
    # What reached the ControlNet: the positive's control prompt and the negative's own prompt, batched.
    spy = _ContextSpy(control)
    _run_sides(sd1, {"control": spy, "cross_attn_controlnet": dog}, {"control": spy})
    seen = spy.contexts[0]
    assert seen.shape[0] == 2
    rows = [seen[i : i + 1] for i in range(2)]
    assert sum(torch.equal(r, dog) for r in rows) == 1 and sum(torch.equal(r, neg) for r in rows) == 1
    assert not any(torch.equal(r, ctx) for r in rows)
