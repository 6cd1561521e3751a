"""Control models (ControlNet, T2I-Adapter) from their weight files: layouts and architecture.

ControlNet files come in the original single-file layout (lllyasviel's ``cldm.py`` names, optionally
under ``control_model.``), which ``ControlNetModel``'s parameter names follow, or in the diffusers
``ControlNetModel`` layout, converted here (the shared encoder through the UNet mapping of
``diffusers_layout``). The architecture is read from the keys with the UNet's own reader
(``detect_unet.controlnet_config_from_state_dict``).

T2I-Adapters come in the TencentARC layout (``conv_in``, ``body.N.*``), which ``T2IAdapter`` follows, or
in the diffusers layout (``adapter.body.I.resnets.J.*``), renamed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from engine.diffusion.models.controlnet import ControlNetModel
from engine.diffusion.models.t2i_adapter import T2IAdapter

from .detect_unet import controlnet_config_from_state_dict
from .diffusers_layout import unet_diffusers_to_original

__all__ = [
    "build_controlnet",
    "build_t2i_adapter",
    "controlnet_diffusers_to_original",
    "hint_block_channels",
    "is_diffusers_controlnet",
    "is_t2i_adapter",
    "strip_controlnet_prefix",
    "t2i_diffusers_to_original",
]


def _assign(
    model: Any, sd: Mapping[str, torch.Tensor], what: str, hint: str, *, dtype: Any, device: Any
) -> Any:
    """Assign ``sd`` into the meta-built ``model`` (strict), then move it to ``dtype``/``device``."""
    missing = sorted(set(model.state_dict()) - set(sd))
    unexpected = sorted(set(sd) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(
            f"{what} weights do not fit the inferred architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}" + (f"; {hint}" if hint else "")
        )
    model.load_state_dict(dict(sd), assign=True)
    if dtype is not None or device is not None:
        model.to(dtype=dtype, device=device)
    return model


# ---- ControlNet ---------------------------------------------------------------------------------------


def hint_block_channels(sd: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    chans = []
    i = 0
    while f"input_hint_block.{i + 2}.weight" in sd:
        chans.append(int(sd[f"input_hint_block.{i}.weight"].shape[0]))
        i += 2
    return tuple(chans)


def is_diffusers_controlnet(keys: Any) -> bool:
    return any(str(k).startswith("controlnet_cond_embedding.") for k in keys)


def controlnet_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``ControlNetModel`` keys -> original single-file keys.

    ControlNet-only parts: ``controlnet_cond_embedding.conv_in`` -> ``input_hint_block.0``, ``.blocks.i``
    -> ``input_hint_block.{2i+2}``, ``.conv_out`` -> the last hint conv; ``controlnet_down_blocks.i`` ->
    ``zero_convs.i.0``; ``controlnet_mid_block`` -> ``middle_block_out.0``. The shared encoder goes through
    the UNet mapping of ``checkpoints.diffusers_layout``."""
    n_blocks = len({k.split(".")[2] for k in sd if k.startswith("controlnet_cond_embedding.blocks.")})
    out: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new: str | None = None
        if key.startswith("controlnet_cond_embedding."):
            sub = key[len("controlnet_cond_embedding.") :]
            if sub.startswith("conv_in."):
                new = "input_hint_block.0." + sub[len("conv_in.") :]
            elif sub.startswith("conv_out."):
                new = f"input_hint_block.{2 * n_blocks + 2}." + sub[len("conv_out.") :]
            else:
                _, idx, leaf = sub.split(".", 2)
                new = f"input_hint_block.{2 * int(idx) + 2}.{leaf}"
        elif key.startswith("controlnet_down_blocks."):
            _, idx, leaf = key.split(".", 2)
            new = f"zero_convs.{idx}.0.{leaf}"
        elif key.startswith("controlnet_mid_block."):
            new = "middle_block_out.0." + key.split(".", 1)[1]
        if new is None:
            rest[key] = value
        else:
            out[new] = value
    out.update(unet_diffusers_to_original(rest))
    return out


def strip_controlnet_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full ControlNet training checkpoints keep the weights under ``control_model.``."""
    prefix = "control_model."
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def build_controlnet(
    sd: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: Any = None,
    num_heads: int | None = None,
    num_head_channels: int | None = None,
) -> ControlNetModel:
    """A ControlNet from weights in the original or diffusers layout, config inferred from the keys."""
    sd = strip_controlnet_prefix(sd)
    if is_diffusers_controlnet(sd):
        sd = controlnet_diffusers_to_original(sd)
    config, hint_ch = controlnet_config_from_state_dict(
        sd, num_heads=num_heads, num_head_channels=num_head_channels
    )
    model = ControlNetModel(
        config, hint_channels=hint_ch, hint_block_channels=hint_block_channels(sd), dtype=dtype, device="meta"
    )
    unsupported = "the file may be a ControlNet variant that is not supported (ControlNet-LLLite, ControlLoRA, Stable Cascade / SD3 ControlNets)"
    return _assign(model, sd, "ControlNet", unsupported, dtype=dtype, device=device)


# ---- T2I-Adapter --------------------------------------------------------------------------------------


def is_t2i_adapter(keys: Any) -> bool:
    ks = set(keys)
    return ("conv_in.weight" in ks and "body.0.block2.weight" in ks) or any(
        str(k).startswith("adapter.") for k in ks
    )


def t2i_diffusers_to_original(sd: Mapping[str, torch.Tensor], nums_rb: int = 2) -> dict[str, torch.Tensor]:
    """diffusers ``T2IAdapter`` keys (``adapter.body.I.resnets.J.``, ``adapter.body.I.downsample``...) ->
    the TencentARC layout (``body.{I*nums_rb+J}.``)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        key = k[len("adapter.") :] if k.startswith("adapter.") else k
        parts = key.split(".")
        if parts[0] == "body" and len(parts) > 3 and parts[2] == "resnets":
            i, j = int(parts[1]), int(parts[3])
            key = ".".join(["body", str(i * nums_rb + j)] + parts[4:])
        elif parts[0] == "body" and len(parts) > 2:
            key = ".".join(["body", str(int(parts[1]) * nums_rb)] + parts[2:])
        out[key] = v
    return out


def build_t2i_adapter(
    sd: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None, device: Any = None
) -> T2IAdapter:
    """A full T2I-Adapter from its weights; raises ValueError for the variants not implemented here
    (Adapter-light, ``body.0.in_conv``; style/CoAdapters)."""
    if "adapter" in sd and not isinstance(sd.get("adapter"), torch.Tensor):
        sd = sd["adapter"]  # type: ignore[assignment]
    if any(k.startswith("adapter.") for k in sd):
        sd = t2i_diffusers_to_original(sd)
    if "conv_in.weight" not in sd:
        raise ValueError(
            "unsupported T2I-Adapter layout: no 'conv_in.weight' (Adapter-light and style adapters are not "
            f"supported); first keys: {sorted(sd)[:5]}"
        )
    cin = int(sd["conv_in.weight"].shape[1])
    n_body = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    nums_rb = 2
    # Each level starts with a (possibly channel-changing) res block: its width is the level's.
    channels = tuple(int(sd[f"body.{i}.block1.weight"].shape[0]) for i in range(0, n_body - 1, nums_rb))
    ksize = int(sd["body.0.block2.weight"].shape[2])
    use_conv = any(k.endswith("down_opt.op.weight") for k in sd)
    xl = cin in (256, 768)  # unshuffle 16: 1 or 3 image channels * 256
    model = T2IAdapter(cin, channels, nums_rb=nums_rb, ksize=ksize, use_conv=use_conv, xl=xl, device="meta")
    return _assign(model, sd, "T2I-Adapter", "", dtype=dtype, device=device)
