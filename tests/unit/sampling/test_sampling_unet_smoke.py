"""Smoke test: the MODELS helper's tiny real UNets through DiffusionModel and the KSampler path."""

from __future__ import annotations

import torch

import engine.diffusion.models.sdxl_conditioning as sdxl_cond
import engine.diffusion.models.unet as unet_mod
from engine.diffusion.sampling.diffusion_model import DiffusionModel  # noqa: E402
from engine.diffusion.sampling.ksampler import sample  # noqa: E402
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete  # noqa: E402


def _counting(unet):
    calls = []
    unet.register_forward_hook(
        lambda m, a, k, out: calls.append(a[0].shape[0] if a else k["x"].shape[0]), with_kwargs=True
    )
    return calls


def test_tiny_sd1_unet_samples_with_cfg_batching(regs):
    torch.manual_seed(0)
    unet = unet_mod.UNetModel(unet_mod.UNetConfig.tiny()).eval()
    calls = _counting(unet)
    model = DiffusionModel(unet, ModelSamplingDiscrete("eps"))
    g = torch.Generator().manual_seed(1)
    pos = [[torch.randn(1, 77, 32, generator=g), {}]]
    neg = [[torch.randn(1, 77, 32, generator=g), {}]]
    lat = torch.zeros(1, 4, 8, 8)
    a = sample(model, None, 3, 5.0, "dpmpp_2m", "karras", pos, neg, lat, seed=9, **regs)
    assert a.shape == lat.shape and torch.isfinite(a).all()
    assert calls == [2, 2, 2]  # cond + uncond batched in one UNet call per step
    b = sample(model, None, 3, 5.0, "dpmpp_2m", "karras", pos, neg, lat, seed=9, **regs)
    assert torch.equal(a, b)
    c = sample(model, None, 3, 5.0, "dpmpp_2m", "karras", pos, neg, lat, seed=10, **regs)
    assert not torch.equal(a, c)


def test_tiny_sdxl_unet_with_adm_builder(regs):
    torch.manual_seed(0)
    cfg = unet_mod.UNetConfig.tiny_sdxl(context_dim=64, pooled_dim=32)
    unet = unet_mod.UNetModel(cfg).eval()

    def adm(cond, width, height):
        return sdxl_cond.sdxl_adm(
            cond["pooled_output"],
            width=cond.get("width", width), height=cond.get("height", height),
            crop_w=cond.get("crop_w", 0), crop_h=cond.get("crop_h", 0),
            target_width=cond.get("target_width", width), target_height=cond.get("target_height", height),
        )  # fmt: skip

    model = DiffusionModel(unet, ModelSamplingDiscrete("eps"), adm_builder=adm)
    pos = [[torch.randn(1, 77, 64), {"pooled_output": torch.randn(1, 32)}]]
    neg = [[torch.zeros(1, 77, 64), {"pooled_output": torch.zeros(1, 32)}]]
    lat = torch.zeros(2, 4, 8, 8)
    out = sample(model, None, 2, 4.0, "euler_ancestral", "sgm_uniform", pos, neg, lat, seed=1, **regs)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
