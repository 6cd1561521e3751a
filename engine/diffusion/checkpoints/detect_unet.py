"""UNet (and ControlNet encoder) configs read from original-layout weights.

Everything except the attention head layout shows in key names and shapes: ``input_blocks.N`` are
walked in order (a block with ``.0.op`` is a downsampler that closes a level, any other block is a
ResBlock, optionally followed by a transformer at ``.1``), transformer depths are counted from
``transformer_blocks.K`` and the context width is the input width of ``attn2.to_k``. The head
count/size shows in no shape, so it is passed in or defaults by context width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from engine.diffusion.models.unet import UNetConfig

from .io import CheckpointError
from .spec import ModelFamily, require_key

_BLOCK_RE = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.")

Weights = Mapping[str, torch.Tensor]


@dataclass
class _Levels:
    """What the encoder half (and the transformers met so far) tell about the shape."""

    channel_mult: list[int] = field(default_factory=list)
    num_res_blocks: list[int] = field(default_factory=list)
    depth_in: list[int] = field(default_factory=list)
    context_dim: int | None = None
    use_linear: bool | None = None


def _need(sd: Weights, key: str) -> torch.Tensor:
    hint = "Strip the 'model.diffusion_model.' prefix before calling unet_config_from_state_dict."
    return require_key(sd, key, "an LDM UNet", hint)


def _block_count(sd: Weights, kind: str) -> int:
    """Number of ``input_blocks``/``output_blocks`` (highest index + 1; 0 when there are none)."""
    return 1 + max(
        (int(m.group(2)) for k in sd if (m := _BLOCK_RE.match(k)) and m.group(1) == kind), default=-1
    )


def _read_transformer(sd: Weights, prefix: str, levels: _Levels) -> int:
    """Depth of the transformer at ``prefix`` (0: none); records its context width and projection kind."""
    if f"{prefix}proj_in.weight" not in sd:
        return 0
    levels.use_linear = sd[f"{prefix}proj_in.weight"].ndim == 2
    pat = re.compile(re.escape(prefix) + r"transformer_blocks\.(\d+)\.")
    depth = len({int(m.group(1)) for key in sd if (m := pat.match(key))})
    k = f"{prefix}transformer_blocks.0.attn2.to_k.weight"
    if depth and k in sd:
        levels.context_dim = int(sd[k].shape[1])
    return depth


def _read_input_levels(sd: Weights, model_channels: int) -> _Levels:
    levels = _Levels()
    count = 0
    for i in range(1, _block_count(sd, "input_blocks")):
        p = f"input_blocks.{i}.0."
        if f"{p}op.weight" in sd:
            levels.num_res_blocks.append(count)
            count = 0
            continue
        w = _need(sd, f"{p}in_layers.2.weight")
        mult, rem = divmod(int(w.shape[0]), model_channels)
        if rem:
            raise ValueError(
                f"{p}in_layers.2.weight: {w.shape[0]} channels is not a multiple of {model_channels}"
            )
        if count == 0:
            levels.channel_mult.append(mult)
        elif levels.channel_mult[-1] != mult:
            raise ValueError(f"{p}in_layers.2.weight: channel count changes inside a level")
        count += 1
        levels.depth_in.append(_read_transformer(sd, f"input_blocks.{i}.1.", levels))
    levels.num_res_blocks.append(count)
    if len(levels.channel_mult) != len(levels.num_res_blocks) or 0 in levels.num_res_blocks:
        raise ValueError(
            f"cannot read the UNet levels from input_blocks (res blocks per level: {levels.num_res_blocks}); "
            "a level without res blocks is not supported"
        )
    return levels


def _read_output_depths(sd: Weights, levels: _Levels) -> list[int]:
    n_out = _block_count(sd, "output_blocks")
    depth_out: list[int] = []
    for i in range(n_out):
        _need(sd, f"output_blocks.{i}.0.in_layers.2.weight")
        depth_out.append(_read_transformer(sd, f"output_blocks.{i}.1.", levels))
    nrb = levels.num_res_blocks
    expected = sum(nrb) + len(nrb)
    if n_out != expected:
        raise ValueError(
            f"UNet has {n_out} output_blocks but its input_blocks (res blocks per level {nrb}) "
            f"imply {expected}; this layout is not supported"
        )
    return depth_out


def _read_middle_depth(sd: Weights, levels: _Levels) -> int | None:
    """Transformer depth of the middle block; None when it is a single ResBlock (or absent)."""
    if "middle_block.1.in_layers.0.weight" in sd:
        raise ValueError(
            "middle_block.1 is a ResBlock; a middle block without transformer but two ResBlocks is not supported"
        )
    if "middle_block.1.norm.weight" in sd:
        return _read_transformer(sd, "middle_block.1.", levels)
    return None


def _head_layout(
    has_transformers: bool, context_dim: int | None, num_heads: int | None, num_head_channels: int | None
) -> tuple[int | None, int | None]:
    """(num_heads, num_head_channels): as given, else 8 heads for CLIP-L's 768 context (SD1) and
    64-channel heads otherwise (SD2, SDXL)."""
    if not has_transformers:
        return None, None
    if num_heads is not None or num_head_channels is not None:
        return num_heads, num_head_channels
    return (8, None) if context_dim == 768 else (None, 64)


def _adm_channels(sd: Weights) -> int | None:
    return int(sd["label_emb.0.0.weight"].shape[1]) if "label_emb.0.0.weight" in sd else None


def _config(
    sd: Weights,
    levels: _Levels,
    *,
    in_channels: int,
    out_channels: int,
    model_channels: int,
    depth_out: list[int],
    middle_block: bool,
    depth_mid: int | None,
    heads: tuple[int | None, int | None],
) -> UNetConfig:
    has_tf = any(levels.depth_in) or any(depth_out) or depth_mid is not None
    num_heads, num_head_channels = _head_layout(has_tf, levels.context_dim, *heads)
    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(levels.channel_mult),
        num_res_blocks=tuple(levels.num_res_blocks),
        transformer_depth=tuple(levels.depth_in),
        transformer_depth_output=tuple(depth_out),
        middle_block=middle_block,
        transformer_depth_middle=depth_mid,
        context_dim=levels.context_dim,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        use_linear_in_transformer=bool(levels.use_linear),
        adm_in_channels=_adm_channels(sd),
    )


def unet_config_from_state_dict(
    sd: Weights, *, num_heads: int | None = None, num_head_channels: int | None = None
) -> UNetConfig:
    """Infer a `UNetConfig` from UNet weights (keys without the ``model.diffusion_model.`` prefix).

    The head layout comes from the arguments (at most one of them) or defaults by context width:
    768 (CLIP ViT-L, SD1) -> 8 heads, anything else (SD2, SDXL) -> 64-channel heads.
    Raises ValueError naming the keys when the dict is not an LDM UNet.
    """
    if num_heads is not None and num_head_channels is not None:
        raise ValueError("unet_config_from_state_dict: pass num_heads or num_head_channels, not both")
    w_in = _need(sd, "input_blocks.0.0.weight")
    w_out = _need(sd, "out.2.weight")
    if w_in.ndim != 4:
        raise ValueError(f"input_blocks.0.0.weight has shape {tuple(w_in.shape)}; expected a 4-D conv weight")
    model_channels = int(w_in.shape[0])
    levels = _read_input_levels(sd, model_channels)
    depth_out = _read_output_depths(sd, levels)
    has_middle = "middle_block.0.in_layers.0.weight" in sd
    return _config(
        sd,
        levels,
        in_channels=int(w_in.shape[1]),
        out_channels=int(w_out.shape[0]),
        model_channels=model_channels,
        depth_out=depth_out,
        middle_block=has_middle,
        depth_mid=_read_middle_depth(sd, levels) if has_middle else None,
        heads=(num_heads, num_head_channels),
    )


def controlnet_config_from_state_dict(
    sd: Weights, *, num_heads: int | None = None, num_head_channels: int | None = None
) -> tuple[UNetConfig, int]:
    """(UNet-shaped config, hint channels) from original-layout ControlNet weights (no prefix).

    A ControlNet is a copy of the UNet's encoder: input blocks and middle block are read exactly as
    for the UNet; there are no output blocks. The head layout defaults as for the UNet. Raises
    ValueError naming the missing key when the dict is not a ControlNet."""
    for key in ("input_blocks.0.0.weight", "input_hint_block.0.weight", "middle_block_out.0.weight"):
        if key not in sd:
            raise ValueError(
                f"not a ControlNet state dict: key {key!r} is missing (first keys: {sorted(sd)[:5]})"
            )
    w_in = sd["input_blocks.0.0.weight"]
    mc, in_ch = int(w_in.shape[0]), int(w_in.shape[1])
    levels = _read_input_levels(sd, mc)
    depth_mid = _read_middle_depth(sd, levels)
    nrb = levels.num_res_blocks
    config = _config(
        sd,
        levels,
        in_channels=in_ch,
        out_channels=in_ch,
        model_channels=mc,
        depth_out=[0] * (sum(nrb) + len(nrb)),
        middle_block=True,
        depth_mid=depth_mid,
        heads=(num_heads, num_head_channels),
    )
    return config, int(sd["input_hint_block.0.weight"].shape[1])


# ---- what detect_checkpoint needs ----------------------------------------------------------------


@dataclass(frozen=True)
class UNetFacts:
    """The UNet numbers that tell the families apart, read without building a config."""

    in_channels: int
    context_dim: int | None  # cross-attention width (None: no cross-attention)
    adm_dim: int | None  # SDXL's size/pooled-text vector (None: no label embedding)


def unet_facts(unet_sd: Weights, path: str) -> UNetFacts:
    if "input_blocks.0.0.weight" not in unet_sd:
        raise CheckpointError(
            path,
            "UNet weights are incomplete: 'model.diffusion_model.input_blocks.0.0.weight' is missing "
            f"(UNet keys present: {len(unet_sd)}); the file is damaged or not an SD checkpoint",
        )
    attn_k = next((v for k, v in unet_sd.items() if k.endswith("attn2.to_k.weight")), None)
    return UNetFacts(
        in_channels=int(unet_sd["input_blocks.0.0.weight"].shape[1]),
        context_dim=int(attn_k.shape[1]) if attn_k is not None else None,
        adm_dim=_adm_channels(unet_sd),
    )


def unet_config_for_family(
    unet_sd: Weights, family: ModelFamily, path: str, num_heads: int | None = None
) -> UNetConfig:
    # Attention heads are the one thing shapes do not show: SD1 uses 8 heads, SD2/SDXL 64-channel heads
    # (``num_heads`` overrides: the SD x4 upscaler is SD2-like with 8 heads).
    kw: dict[str, int] = {"num_heads": 8} if family is ModelFamily.SD1 else {"num_head_channels": 64}
    if num_heads is not None:
        kw = {"num_heads": num_heads}
    try:
        return unet_config_from_state_dict(unet_sd, **kw)
    except ValueError as e:
        raise CheckpointError(path, f"cannot read the UNet configuration: {e}") from None
