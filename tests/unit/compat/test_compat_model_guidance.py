"""The guidance honours a MODEL's ComfyUI options: unet function wrapper, sampler cfg / pre-cfg / post-cfg
functions, disable_cfg1_optimization, the denoise-mask function, and cond_or_uncond / sigmas in the
transformer options, with ComfyUI's argument dicts (comfy/samplers.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.diffusion.models.unet import UNetConfig, UNetModel
from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.guidance import CFGDenoiser, InpaintDenoiser
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete


@pytest.fixture(scope="module")
def dm() -> DiffusionModel:
    torch.manual_seed(0)
    return DiffusionModel(UNetModel(UNetConfig.tiny()).eval(), ModelSamplingDiscrete("eps"))


@pytest.fixture(scope="module")
def conds():
    gen = torch.Generator().manual_seed(2)
    positive = [[torch.randn(1, 5, 32, generator=gen), {}]]
    negative = [[torch.randn(1, 5, 32, generator=gen), {}]]
    x = torch.randn(1, 4, 16, 16, generator=gen) * 3.0
    return positive, negative, x, torch.tensor([3.0])


def guided(dm, conds, cfg: float, options: dict[str, Any] | None = None) -> torch.Tensor:
    positive, negative, x, sigma = conds
    den = CFGDenoiser(dm, positive, negative, cfg, like=x, model_options=options)
    with torch.no_grad():
        return den(x, sigma)


def sides(dm, conds) -> tuple[torch.Tensor, torch.Tensor]:
    """The positive and the negative x0 estimates, each from its own cfg-1 run."""
    positive, negative, x, sigma = conds
    return guided(dm, (positive, None, x, sigma), 1.0), guided(dm, (negative, None, x, sigma), 1.0)


def test_sampler_cfg_function_returning_cond_equals_cfg_1(dm, conds) -> None:
    got = guided(dm, conds, 7.0, {"sampler_cfg_function": lambda args: args["cond"]})
    cond, _ = sides(dm, conds)
    assert torch.allclose(got, cond, atol=1e-5)


def test_sampler_cfg_function_gets_comfyui_args(dm, conds) -> None:
    seen: dict[str, Any] = {}

    def fn(args):
        seen.update(args)
        return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]

    got = guided(dm, conds, 5.0, {"sampler_cfg_function": fn})
    assert torch.allclose(got, guided(dm, conds, 5.0), atol=1e-4)
    x = conds[2]
    cond, uncond = sides(dm, conds)
    assert torch.allclose(seen["cond"], x - cond, atol=1e-5) and torch.allclose(
        seen["uncond"], x - uncond, atol=1e-5
    )
    assert torch.allclose(seen["cond_denoised"], cond, atol=1e-5)
    assert torch.allclose(seen["uncond_denoised"], uncond, atol=1e-5)
    assert seen["cond_scale"] == 5.0 and seen["input"] is x
    assert torch.equal(seen["sigma"], torch.tensor([3.0])) and torch.equal(seen["timestep"], seen["sigma"])
    assert seen["model"] is dm and "model_options" in seen


def test_post_cfg_function_sees_the_guided_estimate(dm, conds) -> None:
    seen: list[torch.Tensor] = []

    def post(args):
        seen.append(args["denoised"])
        assert set(args) >= {
            "cond",
            "uncond",
            "cond_scale",
            "model",
            "uncond_denoised",
            "cond_denoised",
            "sigma",
            "input",
        }
        return args["denoised"] * 0.5

    plain = guided(dm, conds, 4.0)
    got = guided(dm, conds, 4.0, {"sampler_post_cfg_function": [post]})
    assert torch.allclose(seen[0], plain, atol=1e-6)
    assert torch.allclose(got, plain * 0.5, atol=1e-6)


def test_pre_cfg_function_can_swap_the_sides(dm, conds) -> None:
    got = guided(dm, conds, 3.0, {"sampler_pre_cfg_function": [lambda args: args["conds_out"][::-1]]})
    cond, uncond = sides(dm, conds)
    assert torch.allclose(got, cond + (uncond - cond) * 3.0, atol=1e-4)


def test_unet_wrapper_is_called_with_comfyui_dict_and_changes_nothing_when_passing_through(dm, conds) -> None:
    calls: list[dict[str, Any]] = []

    def wrapper(apply_model, args):
        calls.append(args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    got = guided(dm, conds, 6.0, {"model_function_wrapper": wrapper})
    assert torch.equal(got, guided(dm, conds, 6.0))
    assert len(calls) == 1  # one batched call per step for cond + uncond
    args = calls[0]
    assert set(args) == {"input", "timestep", "c", "cond_or_uncond"}
    assert args["cond_or_uncond"] == [0, 1] and args["input"].shape[0] == 2
    assert set(args["c"]) >= {"c_crossattn", "transformer_options"}
    assert args["c"]["transformer_options"]["cond_or_uncond"] == [0, 1]
    assert torch.equal(args["c"]["transformer_options"]["sigmas"], torch.tensor([3.0]))


def test_cond_or_uncond_matches_the_batch_layout(dm, conds) -> None:
    chunks: list[tuple[list[int], torch.Tensor]] = []

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        chunks.append((args["cond_or_uncond"], out))
        return out

    guided(dm, conds, 6.0, {"model_function_wrapper": wrapper})
    cond, uncond = sides(dm, conds)
    order, out = chunks[0]
    by_side = dict(zip(order, out.chunk(len(order)), strict=True))
    assert torch.allclose(by_side[0], cond, atol=1e-5) and torch.allclose(by_side[1], uncond, atol=1e-5)


def test_disable_cfg1_optimization_evaluates_the_negative_at_cfg_1(dm, conds) -> None:
    seen: list[list[int]] = []

    def wrapper(apply_model, args):
        seen.append(args["cond_or_uncond"])
        return apply_model(args["input"], args["timestep"], **args["c"])

    positive, negative, x, sigma = conds
    plain = CFGDenoiser(
        dm, positive, negative, 1.0, like=x, model_options={"model_function_wrapper": wrapper}
    )
    with torch.no_grad():
        plain(x, sigma)
    assert seen == [[0]]
    seen.clear()
    uncond_seen: list[torch.Tensor] = []

    def post(args):
        uncond_seen.append(args["uncond_denoised"])
        return args["denoised"]

    options = {
        "model_function_wrapper": wrapper,
        "disable_cfg1_optimization": True,
        "sampler_post_cfg_function": [post],
    }
    den = CFGDenoiser(dm, positive, negative, 1.0, like=x, model_options=options)
    with torch.no_grad():
        den(x, sigma)
    assert seen == [[0, 1]]
    assert torch.allclose(uncond_seen[0], sides(dm, conds)[1], atol=1e-5)


def test_skipped_negative_side_is_zero_for_hooks_at_cfg_1(dm, conds) -> None:
    seen: dict[str, Any] = {}

    def post(args):
        seen.update(args)
        return args["denoised"]

    got = guided(dm, conds, 1.0, {"sampler_post_cfg_function": [post]})
    assert torch.count_nonzero(seen["uncond_denoised"]) == 0 and seen["uncond"] is None
    assert torch.equal(got, guided(dm, conds, 1.0))


def test_denoise_mask_function_replaces_the_mask_each_call(dm, conds) -> None:
    positive, negative, x, sigma = conds
    calls: list[dict[str, Any]] = []

    def everything(sigma, mask, extra_options):
        calls.append(extra_options)
        return torch.ones_like(mask)

    inner = CFGDenoiser(
        dm, positive, negative, 2.0, like=x, model_options={"denoise_mask_function": everything}
    )
    latent = torch.zeros_like(x)
    zero_mask = torch.zeros_like(x)
    sigmas = torch.tensor([3.0, 1.0, 0.0])
    masked = InpaintDenoiser(
        inner, dm.model_sampling, latent_image=latent, noise=x, mask=zero_mask, sigmas=sigmas
    )
    with torch.no_grad():
        got = masked(x, sigma)
        free = CFGDenoiser(dm, positive, negative, 2.0, like=x)(x, sigma)
    # The function's all-ones mask repaints everything: the result is the unmasked guided estimate.
    assert torch.allclose(got, free, atol=1e-6)
    assert calls[0]["sigmas"] is sigmas and calls[0]["model"] is dm


def test_post_cfg_hook_can_evaluate_a_perturbed_cond_through_calc_cond_batch(tmp_path) -> None:
    """Perturbed-attention guidance as packs write it: inside a post-CFG function, evaluate the positive
    side again with the middle block's self-attention replaced, through calc_cond_batch(args["model"])."""
    from engine.handles import load_checkpoint_handles
    from engine.handles.comfy_surface.base_model import calc_cond_batch
    from engine.memory.devices import DeviceInfo
    from engine.memory.manager import ModelManager
    from tests.factories.checkpoints import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1", seed=1)
    model = load_checkpoint_handles(path, manager=ModelManager(DeviceInfo.cpu()), want_vae=False)[0]
    gen = torch.Generator().manual_seed(3)
    positive = [[torch.randn(1, 5, 32, generator=gen), {}]]
    negative = [[torch.randn(1, 5, 32, generator=gen), {}]]
    x, sigma = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([2.0])
    perturbed: list[torch.Tensor] = []

    def pag(args):
        options = dict(args["model_options"])
        options["transformer_options"] = {
            "patches_replace": {"attn1": {("middle", 0, 0): lambda q, k, v, extra: v}}
        }
        (pert,) = calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], options)
        perturbed.append(pert)
        return args["denoised"] + (args["cond_denoised"] - pert) * 2.0

    clone = model.clone()
    clone.set_model_sampler_post_cfg_function(pag)
    with model.use(), torch.no_grad():
        guided_pag = CFGDenoiser(
            clone.diffusion_model(), positive, negative, 3.0, like=x, model_options=clone.sampling_options()
        )(x, sigma)
        plain = CFGDenoiser(model.diffusion_model(), positive, negative, 3.0, like=x)(x, sigma)
        cond = CFGDenoiser(model.diffusion_model(), positive, None, 1.0, like=x)(x, sigma)
        # The perturbed positive by hand: v passed straight through the middle self-attention.
        replaced = {
            "transformer_options": {"patches_replace": {"attn1": {("middle", 0): lambda q, k, v, e: v}}}
        }
        by_hand = CFGDenoiser(model.diffusion_model(), positive, None, 1.0, like=x, model_options=replaced)(
            x, sigma
        )
    assert len(perturbed) == 1 and torch.allclose(perturbed[0], by_hand, atol=1e-6)
    assert not torch.allclose(by_hand, cond, atol=1e-4)
    assert torch.allclose(guided_pag, plain + (cond - by_hand) * 2.0, atol=1e-5)
