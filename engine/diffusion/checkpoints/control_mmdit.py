"""SD3 / SD3.5 ControlNet files: detection, the diffusers layout converted, the config read from shapes.

Layouts (facts from ComfyUI's ``load_controlnet_state_dict`` / ``load_controlnet_mmdit``):

- diffusers ``SD3ControlNetModel`` (InstantX SD3 / SD3.5 ControlNets): ``pos_embed.*``, ``time_text_embed.*``,
  ``context_embedder``, ``transformer_blocks.N.*`` (split ``to_q``/``to_k``/``to_v``), ``controlnet_blocks.N``,
  ``pos_embed_input.proj``; converted with the SD3 transformer mapping of ``flow_diffusers`` (no block
  is pre-only here, so no adaLN halves are swapped);
- the same weights in the MMDiT's single-file names (``joint_blocks.N.*``, ``x_embedder.proj``, ...), which
  is how ComfyUI holds them after conversion: loaded as they are;
- Stability's own SD3.5 ControlNets (``transformer_blocks.0.adaLN_modulation.1.bias``: DiT blocks without a
  text stream, ComfyUI's ``ControlNetEmbedder``) are another model: ``control_sd35`` builds them.

Config from shapes: hidden size / latent channels / patch size from ``x_embedder.proj.weight``, control
channels from ``pos_embed_input.proj.weight`` (17 = inpainting: latent + mask), blocks from
``joint_blocks.N``, position grid from ``pos_embed``, QK RMS norm and the head size from ``attn.ln_q``; without
QK norm heads are 64 channels wide, and the main MMDiT's depth is hidden / 64 (ComfyUI's rule, true of
every released SD3 model).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from engine.diffusion.models.mmdit_controlnet import MMDiTControlNet, MMDiTControlNetConfig

from .control_sd35 import is_stability_sd35_controlnet
from .flow_diffusers import sd3_diffusers_to_original
from .spec import require_key

_BLOCK = re.compile(r"^joint_blocks\.(\d+)\.")
_DUAL = re.compile(r"^joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$")
_OWN = ("controlnet_blocks.", "pos_embed_input.")
HEAD_CHANNELS = 64


def is_mmdit_controlnet(keys: Any) -> bool:
    ks = set(keys)
    return "controlnet_blocks.0.weight" in ks and "pos_embed_input.proj.weight" in ks


def mmdit_controlnet_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``SD3ControlNetModel`` state dict in our names; one already in them is returned as is."""
    if not any(k.startswith("transformer_blocks.") for k in sd):
        return dict(sd)
    own = {k: v for k, v in sd.items() if k.startswith(_OWN)}
    rest = {k: v for k, v in sd.items() if not k.startswith(_OWN)}
    return {**sd3_diffusers_to_original(rest, pre_only_last=False), **own}


def mmdit_controlnet_config(sd: Mapping[str, torch.Tensor]) -> MMDiTControlNetConfig:
    """The architecture of a ControlNet state dict in our names; ValueError naming a missing key."""

    def need(key: str) -> torch.Tensor:
        return require_key(sd, key, "an SD3 ControlNet", "")

    proj = need("x_embedder.proj.weight")  # (hidden, in_channels, p, p)
    hidden = int(proj.shape[0])
    blocks = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.match(k))), default=-1)
    if blocks == 0:
        need("joint_blocks.0.x_block.attn.qkv.weight")
    ln_q = sd.get("joint_blocks.0.x_block.attn.ln_q.weight")
    head = int(ln_q.shape[0]) if ln_q is not None else HEAD_CHANNELS
    fc1 = sd.get("joint_blocks.0.x_block.mlp.fc1.weight")
    return MMDiTControlNetConfig(
        num_blocks=blocks,
        hidden_size=hidden,
        num_heads=max(1, hidden // head),
        in_channels=int(proj.shape[1]),
        control_channels=int(need("pos_embed_input.proj.weight").shape[1]),
        patch_size=int(proj.shape[2]),
        pos_embed_max_size=math.isqrt(int(need("pos_embed").shape[1])),
        adm_in_channels=int(need("y_embedder.mlp.0.weight").shape[1]),
        context_in_dim=int(need("context_embedder.weight").shape[1]),
        mlp_ratio=float(fc1.shape[0]) / hidden if fc1 is not None else 4.0,
        qk_norm=ln_q is not None,
        dual_attention_layers=tuple(sorted(int(m.group(1)) for k in sd if (m := _DUAL.match(k)))),
        main_depth=max(1, hidden // HEAD_CHANNELS),
    )


def build_mmdit_controlnet(
    sd: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None, device: Any = None
) -> MMDiTControlNet:
    """An SD3 ControlNet from its weights (diffusers or single-file names), strict about the keys."""
    if is_stability_sd35_controlnet(sd):
        raise ValueError(
            "this is one of Stability AI's own SD3.5 ControlNets (DiT blocks without a text stream), not an "
            "InstantX / diffusers SD3ControlNetModel: build it with control_sd35.build_sd35_controlnet"
        )
    sd = mmdit_controlnet_to_original(sd)
    model = MMDiTControlNet(mmdit_controlnet_config(sd), dtype=dtype, device="meta")
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(
            f"SD3 ControlNet weights do not fit the inferred architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.load_state_dict(dict(sd), assign=True)
    if dtype is not None or device is not None:
        model.to(dtype=dtype, device=device)
    return model
