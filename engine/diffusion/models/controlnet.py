"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion Models").

A trainable copy of the UNet's encoder (time embedding, ``input_blocks``, ``middle_block``) whose first
block also receives an embedded control image (``input_hint_block``), and a zero-initialised 1x1
convolution after every input block (``zero_convs.N.0``) and after the middle block
(``middle_block_out.0``). Parameter names are those of the original single-file ControlNet checkpoints
(lllyasviel's ``cldm.py``, without the ``control_model.`` prefix), so those files load as they are;
``controlnet_diffusers_to_original`` converts the diffusers ``ControlNetModel`` layout.

Output (ComfyUI semantics, consumed by ``UNetModel``'s ``control`` argument): ``{"output": [one residual per
input block, in input-block order], "middle": [one residual]}``. The UNet pops "output" entries from the
end as it consumes its skip connections deepest first, so entry i is added to skip connection i.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from engine.diffusion.checkpoints.diffusers_layout import unet_diffusers_to_original

from .unet import UNetConfig, build_embeddings, build_input_blocks, build_middle_block
from .unet_blocks import timestep_embedding

# Channels of the hint encoder of every published ControlNet (cldm.py: 16, 16, 32, 32, 96, 96, 256,
# then a zero conv to model_channels); stride 2 on the 3rd, 5th and 7th conv: 8x downsampling.
HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)


class ControlNetModel(nn.Module):
    """The ControlNet encoder for a UNet of shape ``config`` (only its encoder-side fields are used)."""

    def __init__(
        self,
        config: UNetConfig,
        *,
        hint_channels: int = 3,
        hint_block_channels: tuple[int, ...] = HINT_CHANNELS,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        mc = config.model_channels
        self.time_embed, self.label_emb = build_embeddings(config, fk)
        # input_hint_block: conv (+SiLU) chain; indices 0, 2, 4, ... hold the convs.
        hint: list[nn.Module] = []
        cin = hint_channels
        for i, cout in enumerate(hint_block_channels):
            stride = 2 if i in (2, 4, 6) else 1
            hint += [nn.Conv2d(cin, cout, 3, padding=1, stride=stride, **fk), nn.SiLU()]
            cin = cout
        hint.append(nn.Conv2d(cin, mc, 3, padding=1, **fk))
        self.input_hint_block = nn.Sequential(*hint)

        # The encoder half is the UNet's own (same keys), with a zero convolution after every block.
        self.input_blocks, channels = build_input_blocks(config, fk)
        self.zero_convs = nn.ModuleList([nn.Sequential(nn.Conv2d(c, c, 1, **fk)) for c in channels])
        self.middle_block = build_middle_block(config, channels[-1], fk)
        self.middle_block_out = nn.Sequential(nn.Conv2d(channels[-1], channels[-1], 1, **fk))

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype  # type: ignore[return-value]

    @property
    def hint_channels(self) -> int:
        return int(self.input_hint_block[0].weight.shape[1])  # type: ignore[index]

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor | None,
        hint: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> dict[str, list[torch.Tensor]]:
        """``x``: the UNet's (already scaled) input latent; ``hint``: (B, C, 8h, 8w) control image in 0..1.
        Returns residuals in the UNet's dtype."""
        dtype = self.dtype
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        if self.label_emb is not None:
            if y is None:
                raise ValueError(
                    "this ControlNet is for SDXL and needs the ADM vector y (pooled text + sizes)"
                )
            emb = emb + self.label_emb(y.to(dtype))
        if context is not None:
            context = context.to(dtype)
        guided = self.input_hint_block(hint.to(dtype))
        h = x.to(dtype)
        outs: list[torch.Tensor] = []
        for i, (block, zc) in enumerate(zip(self.input_blocks, self.zero_convs, strict=True)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided
            outs.append(zc(h))
        h = self.middle_block(h, emb, context)
        return {"output": outs, "middle": [self.middle_block_out(h)]}


# ---- config inference and layouts -----------------------------------------------------------------

_INPUT_RE = re.compile(r"^input_blocks\.(\d+)\.")


def controlnet_config_from_state_dict(
    sd: Mapping[str, torch.Tensor], *, num_heads: int | None = None, num_head_channels: int | None = None
) -> tuple[UNetConfig, int]:
    """(UNet-shaped config, hint channels) from original-layout ControlNet weights (no prefix).

    The attention head layout shows in no shape: pass it, or it defaults by context width as for the
    UNet (768, SD1 -> 8 heads; otherwise 64-channel heads). Raises ValueError naming the missing key when the dict is not a ControlNet."""
    for key in ("input_blocks.0.0.weight", "input_hint_block.0.weight", "middle_block_out.0.weight"):
        if key not in sd:
            raise ValueError(
                f"not a ControlNet state dict: key {key!r} is missing (first keys: {sorted(sd)[:5]})"
            )
    w_in = sd["input_blocks.0.0.weight"]
    mc, in_ch = int(w_in.shape[0]), int(w_in.shape[1])
    n_in = 1 + max(int(m.group(1)) for k in sd if (m := _INPUT_RE.match(k)))
    channel_mult: list[int] = []
    nrb: list[int] = []
    depth_in: list[int] = []
    count = 0
    context_dim: int | None = None
    use_linear = False

    def depth_of(prefix: str) -> int:
        nonlocal context_dim, use_linear
        if f"{prefix}proj_in.weight" not in sd:
            return 0
        use_linear = sd[f"{prefix}proj_in.weight"].ndim == 2
        ids = {
            int(m.group(1))
            for k in sd
            if (m := re.match(re.escape(prefix) + r"transformer_blocks\.(\d+)\.", k))
        }
        k = f"{prefix}transformer_blocks.0.attn2.to_k.weight"
        if k in sd:
            context_dim = int(sd[k].shape[1])
        return len(ids)

    for i in range(1, n_in):
        if f"input_blocks.{i}.0.op.weight" in sd:
            nrb.append(count)
            count = 0
            continue
        mult = int(sd[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]) // mc
        if count == 0:
            channel_mult.append(mult)
        count += 1
        depth_in.append(depth_of(f"input_blocks.{i}.1."))
    nrb.append(count)
    depth_mid = depth_of("middle_block.1.") if "middle_block.1.norm.weight" in sd else None
    adm = int(sd["label_emb.0.0.weight"].shape[1]) if "label_emb.0.0.weight" in sd else None
    has_tf = any(depth_in) or depth_mid is not None
    heads: int | None = None
    head_ch: int | None = None
    if has_tf:
        if num_heads is not None or num_head_channels is not None:
            heads, head_ch = num_heads, num_head_channels
        else:
            heads, head_ch = (8, None) if context_dim == 768 else (None, 64)
    config = UNetConfig(
        in_channels=in_ch,
        out_channels=in_ch,
        model_channels=mc,
        channel_mult=tuple(channel_mult),
        num_res_blocks=tuple(nrb),
        transformer_depth=tuple(depth_in),
        transformer_depth_output=(0,) * (sum(nrb) + len(nrb)),
        transformer_depth_middle=depth_mid,
        context_dim=context_dim,
        num_heads=heads,
        num_head_channels=head_ch,
        use_linear_in_transformer=use_linear,
        adm_in_channels=adm,
    )
    return config, int(sd["input_hint_block.0.weight"].shape[1])


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
    missing = sorted(set(model.state_dict()) - set(sd))
    unexpected = sorted(set(sd) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(
            f"ControlNet weights do not fit the inferred architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; the file may be a ControlNet variant that is not supported "
            "(ControlNet-LLLite, ControlLoRA, Stable Cascade / SD3 ControlNets)"
        )
    model.load_state_dict(sd, assign=True)
    if dtype is not None or device is not None:
        model.to(dtype=dtype, device=device)
    return model
