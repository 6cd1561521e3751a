"""Stability AI's own SD3.5 ControlNet files (``sd3.5_large_controlnet_{blur,canny,depth}.safetensors``).

Keys (facts from diffusers' ``scripts/convert_sd3_controlnet_to_diffusers.py`` and ComfyUI's
``load_controlnet_sd35``): ``time_text_embed.timestep_embedder.linear_{1,2}``,
``time_text_embed.text_embedder.linear_{1,2}`` (ours: ``t_embedder.mlp.{0,2}`` / ``y_embedder.mlp.{0,2}``;
files already in those names load too), ``transformer_blocks.N.{adaLN_modulation.1, attn.qkv, attn.proj,
mlp.fc1, mlp.fc2}``, ``controlnet_blocks.N``, ``pos_embed_input.proj`` and a scalar ``control_type``
(0 blur, 1 canny, 2 depth; absent = no preprocessing). No patch embedding: it is the main model's.

Config from shapes: hidden size and pooled width from ``y_embedder.mlp.0.weight`` (hidden, 2048), latent
channels and patch size from ``pos_embed_input.proj.weight``, blocks from ``transformer_blocks.N``.
A ``y_embedder`` of (hidden, hidden) marks ComfyUI's "double y embedding" variant (a second pooled embedder
borrowed from the main model, blocks run side by side), for which no file is known: refused with a message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from engine.diffusion.models.mmdit_controlnet_sd35 import SD35ControlNet, SD35ControlNetConfig

from .spec import require_key

CONTROL_TYPES = {0: "blur", 1: "canny", 2: "depth"}
_RENAMES = (
    ("time_text_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
    ("time_text_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
    ("time_text_embed.text_embedder.linear_1.", "y_embedder.mlp.0."),
    ("time_text_embed.text_embedder.linear_2.", "y_embedder.mlp.2."),
)
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")


def is_stability_sd35_controlnet(keys: Any) -> bool:
    ks = set(keys)
    return (
        "controlnet_blocks.0.weight" in ks
        and "pos_embed_input.proj.weight" in ks
        and "transformer_blocks.0.adaLN_modulation.1.bias" in ks
    )


def sd35_controlnet_to_ours(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    """(the weights in our names, the control type: "blur" / "canny" / "depth", None when not stated)."""
    out: dict[str, torch.Tensor] = {}
    kind: str | None = None
    for key, value in sd.items():
        if key == "control_type":
            code = round(float(value.reshape(-1)[0]))
            kind = CONTROL_TYPES.get(code)
            continue
        for theirs, ours in _RENAMES:
            if key.startswith(theirs):
                key = ours + key[len(theirs) :]
                break
        out[key] = value
    return out, kind


def sd35_controlnet_config(sd: Mapping[str, torch.Tensor]) -> SD35ControlNetConfig:
    """The architecture of a state dict in our names; ValueError naming a missing key."""

    def need(key: str) -> torch.Tensor:
        return require_key(sd, key, "an SD3.5 ControlNet", "")

    y_in = need("y_embedder.mlp.0.weight")  # (hidden, pooled width)
    if y_in.shape[0] == y_in.shape[1]:
        raise ValueError(
            "this SD3.5 ControlNet embeds the pooled vector twice (a (hidden, hidden) y_embedder); that "
            "variant is not supported, only Stability's sd3.5_large_controlnet_blur/canny/depth design"
        )
    proj = need("pos_embed_input.proj.weight")  # (hidden, latent channels, p, p)
    blocks = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.match(k))), default=-1)
    fc1 = need("transformer_blocks.0.mlp.fc1.weight")
    hidden = int(y_in.shape[0])
    return SD35ControlNetConfig(
        num_blocks=blocks,
        hidden_size=hidden,
        in_channels=int(proj.shape[1]),
        patch_size=int(proj.shape[2]),
        adm_in_channels=int(y_in.shape[1]),
        mlp_ratio=float(fc1.shape[0]) / hidden,
    )


def build_sd35_controlnet(
    sd: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None
) -> SD35ControlNet:
    """The ControlNet from its file's weights, strict about the keys; ``control_type`` is set from the file.
    Its patch embedding is zeros until ``borrow_embedder`` copies the sampled model's in."""
    ours, kind = sd35_controlnet_to_ours(sd)
    model = SD35ControlNet(sd35_controlnet_config(ours), dtype=dtype, device="meta")
    expected = model.file_keys()
    missing, unexpected = sorted(expected - set(ours)), sorted(set(ours) - expected - set(model.BORROWED))
    if missing or unexpected:
        raise ValueError(
            f"SD3.5 ControlNet weights do not fit the inferred architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    weights = {k: v if dtype is None else v.to(dtype) for k, v in ours.items() if k in expected}
    model.load_state_dict(weights, strict=False, assign=True)
    model.x_embedder.to_empty(device="cpu")  # real (unset) memory for the borrowed embedder
    model.control_type = kind
    return model
