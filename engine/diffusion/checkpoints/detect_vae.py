"""AutoencoderKL configs read from original-layout VAE weights (``encoder.down.I.block.J``...)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from engine.diffusion.models.vae import VAEConfig

from .io import CheckpointError
from .spec import ModelFamily, require_key, vae_scaling_factor


def _count(sd: Mapping[str, torch.Tensor], template: str) -> int:
    """How many consecutive indices ``n`` from 0 have ``template.format(n)`` in ``sd``."""
    n = 0
    while template.format(n) in sd:
        n += 1
    return n


def vae_config_from_state_dict(
    sd: Mapping[str, torch.Tensor], *, scaling_factor: float = 0.18215, shift_factor: float = 0.0
) -> VAEConfig:
    """Infer a `VAEConfig` from weights (keys without ``first_stage_model.``). The scale and shift
    factors are not stored in the weights: SD1/SD2 use 0.18215, SDXL 0.13025, SD3 1.5305 / 0.0609,
    Flux 0.3611 / 0.1159; pass them. Files without ``post_quant_conv`` (SD3, Flux) get
    ``use_quant_conv=False``."""

    def need(key: str) -> torch.Tensor:
        hint = "Strip the 'first_stage_model.' prefix (or a standalone VAE file's own prefix) first."
        return require_key(sd, key, "an AutoencoderKL", hint)

    conv_in = need("encoder.conv_in.weight")
    ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    levels = _count(sd, "encoder.down.{}.block.0.conv1.weight")
    if levels == 0:
        need("encoder.down.0.block.0.conv1.weight")
    ch_mult = tuple(int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in range(levels))
    nrb = _count(sd, "encoder.down.0.block.{}.conv1.weight")
    if f"decoder.up.0.block.{nrb}.conv1.weight" not in sd:
        raise ValueError(
            f"decoder.up.0.block.{nrb}.conv1.weight missing: the decoder must have one res block more "
            f"per level than the encoder ({nrb})"
        )
    z_channels = int(need("decoder.conv_in.weight").shape[1])
    enc_out = int(need("encoder.conv_out.weight").shape[0])
    quant = "post_quant_conv.weight" in sd or "quant_conv.weight" in sd
    return VAEConfig(
        in_channels=in_channels,
        out_channels=int(need("decoder.conv_out.weight").shape[0]),
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=nrb,
        z_channels=z_channels,
        embed_dim=int(need("post_quant_conv.weight").shape[1]) if quant else z_channels,
        double_z=enc_out == 2 * z_channels,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant,
    )


def vae_config_for_file(
    vae_sd: Mapping[str, torch.Tensor],
    scaling_factor: float,
    path: str | os.PathLike[str],
    shift_factor: float = 0.0,
) -> VAEConfig:
    """`vae_config_from_state_dict`, its ValueError turned into a CheckpointError naming the file."""
    try:
        return vae_config_from_state_dict(vae_sd, scaling_factor=scaling_factor, shift_factor=shift_factor)
    except ValueError as e:
        raise CheckpointError(path, f"cannot read the VAE configuration: {e}") from None


def vae_config_for_family(
    vae_sd: Mapping[str, torch.Tensor], family: ModelFamily | None, path: str
) -> VAEConfig:
    return vae_config_for_file(vae_sd, vae_scaling_factor(family), path)
