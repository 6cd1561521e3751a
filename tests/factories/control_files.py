"""Tiny files in the layouts of Stability's SD3.5 ControlNets and BFL's FLUX.1 control LoRAs."""

from __future__ import annotations

import torch

from engine.diffusion.models import flux
from engine.diffusion.models.mmdit_controlnet_sd35 import SD35ControlNet, SD35ControlNetConfig
from tests.factories.random_weights import randomize_

_SD35_RENAMED = (
    ("t_embedder.mlp.0.", "time_text_embed.timestep_embedder.linear_1."),
    ("t_embedder.mlp.2.", "time_text_embed.timestep_embedder.linear_2."),
    ("y_embedder.mlp.0.", "time_text_embed.text_embedder.linear_1."),
    ("y_embedder.mlp.2.", "time_text_embed.text_embedder.linear_2."),
)


def sd35_controlnet_state_dict(
    config: SD35ControlNetConfig, *, seed: int = 3, control_type: int | None = 1
) -> dict[str, torch.Tensor]:
    """Random weights in the names of ``sd3.5_large_controlnet_*.safetensors``: no patch embedding (the
    main model's is used), diffusers-style time/text embedder names, ``control_type`` 0 blur / 1 canny / 2
    depth (None: no such key)."""
    model = SD35ControlNet(config)
    randomize_(model, seed)
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("x_embedder."):
            continue
        for ours, theirs in _SD35_RENAMED:
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
        out[key] = value.detach().clone().contiguous()
    if control_type is not None:
        out["control_type"] = torch.tensor([float(control_type)])
    return out


def bfl_control_lora_state_dict(
    config: flux.FluxConfig, *, control_channels: int = 16, rank: int = 4, seed: int = 5
) -> dict[str, torch.Tensor]:
    """A LoRA in the layout of ``flux1-depth-dev-lora.safetensors``: PEFT ``lora_A`` / ``lora_B`` (+ ``lora_B.bias``)
    on ``img_in`` - whose input grows by ``control_channels`` latent channels - and on the first double
    block's image qkv, and every QK-norm scale given whole."""
    g = torch.Generator().manual_seed(seed)
    patch = config.patch_size**2
    hidden = config.hidden_size
    out: dict[str, torch.Tensor] = {
        "img_in.lora_A.weight": torch.randn(
            rank, (config.in_channels + control_channels) * patch, generator=g
        ),
        "img_in.lora_B.weight": torch.randn(hidden, rank, generator=g) * 0.1,
        "img_in.lora_B.bias": torch.randn(hidden, generator=g) * 0.1,
        "double_blocks.0.img_attn.qkv.lora_A.weight": torch.randn(rank, hidden, generator=g),
        "double_blocks.0.img_attn.qkv.lora_B.weight": torch.randn(3 * hidden, rank, generator=g) * 0.1,
    }
    head = hidden // config.num_heads
    norms = [f"double_blocks.{i}.{s}_attn.norm" for i in range(config.depth) for s in ("img", "txt")]
    norms += [f"single_blocks.{i}.norm" for i in range(config.depth_single_blocks)]
    for norm in norms:
        for which in ("query_norm", "key_norm"):
            out[f"{norm}.{which}.scale"] = 1.0 + torch.rand(head, generator=g)
    return out
