"""Parity of the UNet variants with diffusers given the same tiny random weights.

- The SD x4 upscaler UNet (StableDiffusionUpscalePipeline's: ``num_class_embeds=1000``, the noise level as
  ``class_labels``; ``only_cross_attention`` where LDM has disable_self_attentions): one UNet call on
  diffusers' single-file conversion of our original-layout weights (diffusers' converter does not map the
  class table, ``label_emb.weight`` -> ``class_embedding.weight``, so the test does).
- InstructPix2Pix (StableDiffusionInstructPix2PixPipeline): its UNet input is [scaled latents, the image's
  unscaled VAE latent]; our denoiser, fed the latent as InstructPixToPixConditioning's
  "concat_latent_image", makes the same UNet call.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from engine.diffusion.models import latent_formats
from engine.diffusion.models.unet import UNetConfig, UNetModel
from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from engine.diffusion.sampling.unet_variants import concat_variant
from tests.factories.checkpoints import diffusers_unet_config
from tests.factories.random_weights import randomize_
from tests.factories.unet_variants import x4_unet_config

pytestmark = [pytest.mark.parity, pytest.mark.slow]

PREFIX = "model.diffusion_model."


def _pair(cfg: UNetConfig, extra: dict, seed: int) -> tuple[UNetModel, diffusers.UNet2DConditionModel]:
    ours = UNetModel(cfg).eval()
    randomize_(ours, seed, unit=("label_emb",))
    sd = {PREFIX + k: v for k, v in ours.state_dict().items()}
    config = {**diffusers_unet_config(cfg), **extra}
    config.pop("_class_name")
    converted = convert_ldm_unet_checkpoint(sd, config)
    if cfg.num_classes is not None:
        converted["class_embedding.weight"] = ours.label_emb.weight.detach().clone()
    ref = diffusers.UNet2DConditionModel(**config).eval()
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours, ref


def test_x4_upscaler_unet_matches_diffusers():
    cfg = x4_unet_config()
    only_cross = list(cfg.disable_self_attentions)
    ours, ref = _pair(cfg, {"num_class_embeds": 1000, "only_cross_attention": only_cross}, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 16, 16, generator=g)
    ctx = torch.randn(2, 5, cfg.context_dim, generator=g)
    t = torch.tensor([20.0, 900.0])
    levels = torch.tensor([0, 70])
    with torch.no_grad():
        a = ours(x, t, ctx, y=levels)
        b = ref(x, t, encoder_hidden_states=ctx, class_labels=levels).sample
        other = ours(x, t, ctx, y=torch.tensor([5, 70]))
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() <= 1e-4
    assert (other[0] - a[0]).abs().max() > 1e-3  # the noise level matters


def test_ip2p_denoiser_call_matches_diffusers_unet_on_the_pipeline_input():
    cfg = UNetConfig.tiny(in_channels=8)
    ours, ref = _pair(cfg, {}, seed=3)
    ms = ModelSamplingDiscrete("eps")
    dm = DiffusionModel(ours, ms, variant=concat_variant("ip2p"), latent_format=latent_formats.SD15)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 8, 8, generator=g) * 3.0
    image_latent = torch.randn(1, 4, 8, 8, generator=g)  # a raw VAE latent (the pipeline's .mode())
    ctx = torch.randn(1, 3, 32, generator=g)
    sigma = torch.tensor([2.5])
    concat = dm.concat_cond(
        x, latent_image=None, denoise_mask=None, cond={"concat_latent_image": image_latent}
    )
    with torch.no_grad():
        x0 = dm.apply(x, sigma, context=ctx, c_concat=concat)
        t = ms.model_timestep(sigma).float()
        eps = ref(
            torch.cat([ms.calculate_input(sigma, x), image_latent], 1), t, encoder_hidden_states=ctx
        ).sample
    assert (x0 - (x - sigma * eps)).abs().max().item() <= 1e-4
