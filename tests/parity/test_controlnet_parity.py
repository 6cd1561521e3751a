"""Our ControlNet vs ``diffusers.ControlNetModel`` given the same tiny random weights.

The original-layout weights of our model are converted by diffusers' own single-file conversion
(``diffusers.loaders.single_file_utils.convert_controlnet_checkpoint``) and loaded strictly into a
``ControlNetModel``; the residuals must agree within 1e-4 in float32. Our diffusers -> original
conversion is checked to invert diffusers' conversion exactly.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel as DiffusersControlNet
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from engine.diffusion.checkpoints.control import build_controlnet, controlnet_diffusers_to_original
from engine.diffusion.models.controlnet import ControlNetModel
from engine.diffusion.models.sdxl_conditioning import sdxl_adm
from engine.diffusion.models.unet import UNetConfig
from tests.factories.checkpoints import diffusers_unet_config

pytestmark = [pytest.mark.parity, pytest.mark.slow]
TOL = 1e-4


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _reference(ours: ControlNetModel, cfg: UNetConfig) -> DiffusersControlNet:
    conf = diffusers_unet_config(cfg)
    keep = (
        "in_channels", "block_out_channels", "down_block_types", "layers_per_block", "transformer_layers_per_block",
        "mid_block_type", "cross_attention_dim", "attention_head_dim", "use_linear_projection", "norm_num_groups",
        "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
    )  # fmt: skip
    ref = DiffusersControlNet(**{k: conf[k] for k in keep if k in conf})
    sd = dict(ours.state_dict())
    converted = convert_controlnet_checkpoint(sd, {"layers_per_block": conf["layers_per_block"]})
    # diffusers 0.42's single-file ControlNet conversion has no rows for SDXL's label_emb; its UNet
    # conversion maps label_emb.0.0 / .0.2 to add_embedding.linear_1 / linear_2, used here by hand.
    for i, j in ((1, 0), (2, 2)):
        for leaf in ("weight", "bias"):
            if f"label_emb.0.{j}.{leaf}" in sd:
                converted[f"add_embedding.linear_{i}.{leaf}"] = sd[f"label_emb.0.{j}.{leaf}"]
    ref.load_state_dict(converted, strict=True)
    return ref.eval()


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_controlnet_matches_diffusers(family):
    cfg = {"sd1": UNetConfig.tiny(), "sd2": UNetConfig.tiny_sd2(), "sdxl": UNetConfig.tiny_sdxl()}[family]
    ours = ControlNetModel(cfg).eval()
    _randomise(ours, seed=11)
    ref = _reference(ours, cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    hint = torch.rand(2, 3, 128, 128, generator=g)
    ctx = torch.randn(2, 5, cfg.context_dim, generator=g)
    t = torch.tensor([10.0, 700.0])
    y = None
    kwargs = {}
    if cfg.adm_in_channels is not None:
        pooled = torch.randn(2, cfg.adm_in_channels - 6 * 256, generator=g)
        y = sdxl_adm(pooled, width=1024, height=768, crop_w=0, crop_h=0, target_width=1024, target_height=768)
        time_ids = torch.tensor([[768.0, 1024.0, 0.0, 0.0, 768.0, 1024.0]] * 2)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        out = ours(x, t, ctx, hint, y)
        down, mid = ref(x, t, ctx, hint, return_dict=False, **kwargs)
    assert len(out["output"]) == len(down)
    for a, b in zip(out["output"], down, strict=True):
        assert (a - b).abs().max() <= TOL
    assert (out["middle"][0] - mid).abs().max() <= TOL

    # diffusers' conversion inverted by ours; build_controlnet accepts either layout.
    conv = {k: v for k, v in ref.state_dict().items()}
    back = controlnet_diffusers_to_original(conv)
    assert set(back) == set(ours.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    rebuilt = build_controlnet(conv, num_heads=cfg.num_heads, num_head_channels=cfg.num_head_channels)
    for field in ("in_channels", "model_channels", "channel_mult", "num_res_blocks", "transformer_depth",
                  "transformer_depth_middle", "context_dim", "use_linear_in_transformer", "adm_in_channels",
                  "num_heads", "num_head_channels"):  # fmt: skip
        assert getattr(rebuilt.config, field) == getattr(ours.config, field), field
    with torch.no_grad():
        again = rebuilt(x, t, ctx, hint, y)
    assert all(torch.equal(a, b) for a, b in zip(again["output"], out["output"], strict=True))
