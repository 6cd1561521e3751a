"""UNet config presets and `unet_config_from_state_dict` on full-size and pruned shapes (meta device)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.diffusion.checkpoints.detect_unet import (
    controlnet_config_from_state_dict,
    unet_config_from_state_dict,
)
from engine.diffusion.models.controlnet import ControlNetModel
from engine.diffusion.models.unet import UNetConfig, UNetModel


def meta_state_dict(cfg: UNetConfig) -> dict[str, torch.Tensor]:
    # meta tensors carry shapes only: full-size models cost no memory here.
    return UNetModel(cfg, device="meta").state_dict()


def n_params(sd: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in sd.values())


# Published parameter counts of the original UNets.
@pytest.mark.parametrize(
    ("preset", "count"),
    [("sd15", 859_520_964), ("sd2", 865_910_724), ("sdxl", 2_567_463_684)],
)
def test_preset_parameter_counts(preset: str, count: int) -> None:
    assert n_params(meta_state_dict(getattr(UNetConfig, preset)())) == count


def test_key_names_follow_original_checkpoints() -> None:
    sd = meta_state_dict(UNetConfig.sdxl())
    for key in [
        "time_embed.0.weight",
        "time_embed.2.bias",
        "label_emb.0.0.weight",
        "label_emb.0.2.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.0.skip_connection.weight",
        "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
        "input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight",
        "input_blocks.4.1.transformer_blocks.0.ff.net.2.weight",
        "input_blocks.4.1.transformer_blocks.0.attn1.to_out.0.bias",
        "middle_block.1.transformer_blocks.9.norm3.weight",
        "middle_block.2.out_layers.3.bias",
        "output_blocks.2.2.conv.weight",
        "output_blocks.8.0.skip_connection.weight",
        "out.0.weight",
        "out.2.weight",
    ]:
        assert key in sd, key
    assert sd["label_emb.0.0.weight"].shape == (1280, 2816)
    assert sd["input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"].shape == (640, 2048)
    assert sd["input_blocks.4.1.proj_in.weight"].ndim == 2  # linear projection
    sd1 = meta_state_dict(UNetConfig.sd15())
    assert sd1["input_blocks.1.1.proj_in.weight"].shape == (320, 320, 1, 1)  # conv projection
    assert sd1["output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)


FULL = {
    "sd15": (UNetConfig.sd15(), {}),
    "sd15-inpaint": (UNetConfig.sd15(in_channels=9), {}),
    "sd2": (UNetConfig.sd2(), {}),
    "sdxl": (UNetConfig.sdxl(), {}),
    "sdxl-inpaint": (UNetConfig.sdxl(in_channels=9), {}),
    "sdxl-refiner": (UNetConfig.sdxl_refiner(), {}),
}


@pytest.mark.parametrize("name", list(FULL))
def test_config_inferred_from_full_size_shapes(name: str) -> None:
    cfg, _ = FULL[name]
    # No head arguments: the context-width default must give the family's head layout.
    assert unet_config_from_state_dict(meta_state_dict(cfg)) == cfg


def _sdxl_like(depth_in: tuple[int, ...], depth_out: tuple[int, ...], middle: int | None) -> UNetConfig:
    return dataclasses.replace(
        UNetConfig.sdxl(),
        transformer_depth=depth_in,
        transformer_depth_output=depth_out,
        transformer_depth_middle=middle,
    )


PRUNED = {
    # BK-SDM-Base: one res block per level in the encoder (two in the decoder), middle block kept.
    "bk-sdm-base": UNetConfig.from_levels(
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=1,
        level_depth=(1, 1, 1, 0),
        middle_depth=1,
        model_channels=320,
        context_dim=768,
        num_heads=8,
    ),
    # BK-SDM-Small: additionally without middle block.
    "bk-sdm-small": dataclasses.replace(
        UNetConfig.from_levels(
            channel_mult=(1, 2, 4, 4),
            num_res_blocks=1,
            level_depth=(1, 1, 1, 0),
            middle_depth=None,
            model_channels=320,
            context_dim=768,
            num_heads=8,
        ),
        middle_block=False,
    ),
    # SSD-1B and Segmind Vega: SDXL with per-block depths and a ResBlock-only middle block.
    "ssd-1b": _sdxl_like((0, 0, 2, 2, 4, 4), (4, 4, 10, 2, 1, 1, 0, 0, 0), None),
    "vega": _sdxl_like((0, 0, 1, 1, 2, 2), (2, 2, 2, 1, 1, 1, 0, 0, 0), None),
    # uneven res blocks per level
    "uneven": UNetConfig.from_levels(
        channel_mult=(1, 2, 4),
        num_res_blocks=(1, 2, 3),
        level_depth=(0, 1, 3),
        middle_depth=2,
        model_channels=64,
        context_dim=128,
        num_head_channels=64,
        num_heads=None,
        use_linear_in_transformer=True,
    ),
}


@pytest.mark.parametrize("name", list(PRUNED))
def test_config_inferred_for_pruned_variants(name: str) -> None:
    cfg = PRUNED[name]
    sd = meta_state_dict(cfg)
    inferred = unet_config_from_state_dict(
        sd, num_heads=cfg.num_heads, num_head_channels=cfg.num_head_channels
    )
    assert inferred == cfg
    # and the inferred config rebuilds exactly the same parameter shapes
    rebuilt = meta_state_dict(inferred)
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


ENCODER_FIELDS = (
    "in_channels",
    "model_channels",
    "channel_mult",
    "num_res_blocks",
    "transformer_depth",
    "transformer_depth_middle",
    "context_dim",
    "num_heads",
    "num_head_channels",
    "use_linear_in_transformer",
    "adm_in_channels",
)


@pytest.mark.parametrize("name", ["sd15", "sdxl", "ssd-1b", "uneven"])
def test_controlnet_config_reads_the_encoder_as_the_unet_does(name: str) -> None:
    """A ControlNet is the UNet's encoder: its config comes from the same reader, output side empty."""
    cfg = FULL[name][0] if name in FULL else PRUNED[name]
    sd = ControlNetModel(cfg, hint_channels=3, device="meta").state_dict()
    heads = {} if name in FULL else {"num_heads": cfg.num_heads, "num_head_channels": cfg.num_head_channels}
    inferred, hint_channels = controlnet_config_from_state_dict(sd, **heads)
    assert hint_channels == 3
    assert {f: getattr(inferred, f) for f in ENCODER_FIELDS} == {f: getattr(cfg, f) for f in ENCODER_FIELDS}
    assert not any(inferred.transformer_depth_output)
    rebuilt = ControlNetModel(inferred, hint_channels=3, device="meta").state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


def test_pruned_variants_have_fewer_parameters() -> None:
    full = n_params(meta_state_dict(UNetConfig.sd15()))
    base = n_params(meta_state_dict(PRUNED["bk-sdm-base"]))
    small = n_params(meta_state_dict(PRUNED["bk-sdm-small"]))
    assert small < base < full
    assert "middle_block.0.in_layers.0.weight" not in meta_state_dict(PRUNED["bk-sdm-small"])


def test_head_arguments_override_default() -> None:
    sd = meta_state_dict(UNetConfig.sd15())
    cfg = unet_config_from_state_dict(sd, num_head_channels=64)
    assert cfg.num_heads is None and cfg.num_head_channels == 64
    assert cfg.heads_for(640) == (10, 64)
    assert UNetConfig.sd15().heads_for(640) == (8, 80)
    with pytest.raises(ValueError, match="not both"):
        unet_config_from_state_dict(sd, num_heads=8, num_head_channels=64)


def test_prefixed_or_foreign_state_dict_gives_clear_error() -> None:
    sd = meta_state_dict(UNetConfig.tiny())
    prefixed = {"model.diffusion_model." + k: v for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"input_blocks\.0\.0\.weight.*model\.diffusion_model\."):
        unet_config_from_state_dict(prefixed)
    with pytest.raises(ValueError, match="out.2.weight"):
        unet_config_from_state_dict({k: v for k, v in sd.items() if not k.startswith("out.")})


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="transformer_depth"):
        dataclasses.replace(UNetConfig.sd15(), transformer_depth=(1, 1))
    with pytest.raises(ValueError, match="exactly one of num_heads"):
        dataclasses.replace(UNetConfig.sd15(), num_head_channels=64)
    with pytest.raises(ValueError, match="GroupNorm"):
        dataclasses.replace(UNetConfig.tiny(), model_channels=40)
