"""The latent-diffusion UNet of Stable Diffusion 1.x / 2.x / SDXL (base and refiner), in plain torch.

Architecture: "High-Resolution Image Synthesis with Latent Diffusion Models" (Rombach et al. 2022) and
"SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis" (Podell et al. 2023); the
module layout follows the CompVis ``openaimodel.UNetModel`` so that **parameter names are exactly the
original checkpoint keys without the ``model.diffusion_model.`` prefix** (``input_blocks.0.0.weight``,
``time_embed.0.weight``, ``label_emb.0.0.weight``, ``middle_block.1.proj_in.weight``, ``out.2.weight``).

The config (`UNetConfig`) stores transformer depths per block rather than per level, so pruned and
distilled variants fit: BK-SDM (fewer res blocks, no middle block), SSD-1B and Vega (varied depths).

Forward contract
----------------
``UNetModel.forward(x, timesteps, context=None, y=None, control=None, transformer_options=None)``

- ``x``: latents (B, in_channels, h, w); ``timesteps``: (B,) or scalar, in the 0..999 training scale;
  ``context``: text tokens (B, T, context_dim); ``y``: the ADM vector (B, adm_in_channels) for SDXL
  (see ``sdxl_conditioning.sdxl_adm``). Inputs are cast to the model's dtype; the output has ``x``'s dtype.
- ``control`` (ControlNet / T2I-adapter residuals, ComfyUI semantics): a dict of lists of tensors or None.
  Lists are consumed from the *end* (``pop()``) on a private copy, the caller's lists are not changed:
    * ``"input"``: one entry popped after each input block and added to its output (before it is
      stored as a skip connection);
    * ``"middle"``: one entry popped and added after the middle block;
    * ``"output"``: one entry popped per skip connection as the output blocks consume them (the
      skips are consumed deepest first, so a list in input-block order lines up); this is where a
      ControlNet's zero-conv outputs go.
  A ``None`` entry or an exhausted list means "nothing to add".
- ``transformer_options``: a dict passed down to patches (ComfyUI's keys and patch points); during the
  call its copy carries ``"block": ("input" | "middle" | "output", index)``, ``"original_shape"``,
  ``"transformer_index"`` (transformers run so far), ``"block_index"`` (depth inside a transformer)
  and ``"activations_shape"``. ``transformer_options["patches"]`` lists, each applied in order:
    * ``"emb_patch"``: ``fn(emb, model_channels, options) -> emb`` on the time embedding;
    * ``"input_block_patch"``: ``fn(h, options) -> h`` after each input block (and its ControlNet
      residual), before ``h`` is kept as a skip; ``"input_block_patch_after_skip"`` after it was kept;
    * ``"output_block_patch"``: ``fn(h, skip, options) -> (h, skip)`` before each output block
      concatenates its skip;
    * ``"block_output"`` (diffgraph's own): ``fn(h, options) -> h`` on the output of every input, middle
      and output block (after ControlNet residuals were added);
    * the attention patches of the transformer blocks (see ``unet_blocks.BasicTransformerBlock``), and
      ``transformer_options["patches_replace"]["attn1" | "attn2"][(block_name, number[, depth_index])]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .unet_blocks import (
    NORM_GROUPS,
    Downsample,
    ResBlock,
    SpatialTransformer,
    TimestepBlock,
    Upsample,
    timestep_embedding,
)
from .wrappers import call_wrapped


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a UNet. Transformer depths are given per block (0 = no transformer in that block).

    - ``transformer_depth``: one entry per input res block, in ``input_blocks`` order
      (length ``sum(num_res_blocks)``).
    - ``transformer_depth_output``: one entry per output block, in ``output_blocks`` order (deepest level
      first; length ``sum(num_res_blocks) + len(channel_mult)``).
    - ``middle_block``: False for variants without one (BK-SDM small/tiny).
      ``transformer_depth_middle``: None means the middle block is a single ResBlock.
    - Attention heads: either ``num_heads`` (fixed count, SD1: 8) or ``num_head_channels`` (fixed
      size, SD2/SDXL: 64; a block with fewer channels than that gets one head).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 0, 0)
    transformer_depth_output: tuple[int, ...] = (0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    middle_block: bool = True
    transformer_depth_middle: int | None = 1
    context_dim: int | None = 768
    num_heads: int | None = 8
    num_head_channels: int | None = None
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None
    # The SD x4 upscaler: ``label_emb`` is a class embedding of the noise level (``label_emb.weight``,
    # LDM's num_classes = 1000), and the transformers of the levels marked here attend to the text
    # context in attn1 too (LDM's disable_self_attentions, one flag per level; None: none do).
    num_classes: int | None = None
    disable_self_attentions: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if levels == 0 or len(self.num_res_blocks) != levels:
            raise ValueError(
                f"UNetConfig: num_res_blocks {self.num_res_blocks} needs one entry per level of "
                f"channel_mult {self.channel_mult}"
            )
        if len(self.transformer_depth) != sum(self.num_res_blocks):
            raise ValueError(
                f"UNetConfig: transformer_depth {self.transformer_depth} needs one entry per input res "
                f"block ({sum(self.num_res_blocks)})"
            )
        n_out = sum(self.num_res_blocks) + levels
        if len(self.transformer_depth_output) != n_out:
            raise ValueError(
                f"UNetConfig: transformer_depth_output {self.transformer_depth_output} needs one entry "
                f"per output block ({n_out})"
            )
        if self.has_transformers:
            if (self.num_heads is None) == (self.num_head_channels is None):
                raise ValueError("UNetConfig: give exactly one of num_heads and num_head_channels")
            if self.context_dim is None:
                raise ValueError("UNetConfig: transformers need a context_dim")
        for mult in self.channel_mult:
            if (self.model_channels * mult) % NORM_GROUPS:
                raise ValueError(
                    f"UNetConfig: model_channels*mult = {self.model_channels * mult} is not divisible "
                    f"by the {NORM_GROUPS} GroupNorm groups"
                )

    @property
    def has_transformers(self) -> bool:
        return (
            any(self.transformer_depth)
            or any(self.transformer_depth_output)
            or (self.middle_block and self.transformer_depth_middle is not None)
        )

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(number of heads, channels per head) for a transformer on ``channels`` channels."""
        if self.num_heads is not None:
            return self.num_heads, channels // self.num_heads
        assert self.num_head_channels is not None
        heads = max(1, channels // self.num_head_channels)
        return heads, channels // heads

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def from_levels(
        cls,
        *,
        channel_mult: tuple[int, ...],
        num_res_blocks: int | tuple[int, ...],
        level_depth: tuple[int, ...],
        middle_depth: int | None,
        **kw: Any,
    ) -> UNetConfig:
        """Build a config from one transformer depth per level (the original YAML style)."""
        nrb = (
            tuple(num_res_blocks)
            if isinstance(num_res_blocks, tuple)
            else (num_res_blocks,) * len(channel_mult)
        )
        depth_in = tuple(d for d, n in zip(level_depth, nrb, strict=True) for _ in range(n))
        depth_out = tuple(
            d for d, n in reversed(list(zip(level_depth, nrb, strict=True))) for _ in range(n + 1)
        )
        return cls(
            channel_mult=channel_mult,
            num_res_blocks=nrb,
            transformer_depth=depth_in,
            transformer_depth_output=depth_out,
            transformer_depth_middle=middle_depth,
            **kw,
        )

    @classmethod
    def sd15(cls, *, in_channels: int = 4) -> UNetConfig:
        """SD 1.x (v1-inference.yaml): 320 channels, CLIP ViT-L context (768), 8 heads, conv proj."""
        return cls.from_levels(
            channel_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            level_depth=(1, 1, 1, 0),
            middle_depth=1,
            in_channels=in_channels,
            model_channels=320,
            context_dim=768,
            num_heads=8,
        )

    @classmethod
    def sd2(cls, *, in_channels: int = 4) -> UNetConfig:
        """SD 2.x (v2-inference(-v).yaml): SD 1.x's shape with OpenCLIP ViT-H context (1024), 64-channel
        heads and linear projections."""
        return dataclasses.replace(
            cls.sd15(in_channels=in_channels),
            context_dim=1024,
            num_heads=None,
            num_head_channels=64,
            use_linear_in_transformer=True,
        )

    @classmethod
    def sdxl(cls, *, in_channels: int = 4) -> UNetConfig:
        """SDXL base (sd_xl_base.yaml): 3 levels, depths 0/2/10, context 2048, ADM 2816."""
        return cls.from_levels(
            channel_mult=(1, 2, 4),
            num_res_blocks=2,
            level_depth=(0, 2, 10),
            middle_depth=10,
            in_channels=in_channels,
            model_channels=320,
            context_dim=2048,
            num_heads=None,
            num_head_channels=64,
            use_linear_in_transformer=True,
            adm_in_channels=2816,
        )

    @classmethod
    def sdxl_refiner(cls) -> UNetConfig:
        """SDXL refiner (sd_xl_refiner.yaml): 384 channels, depths 0/4/4/0, context 1280, ADM 2560."""
        return cls.from_levels(
            channel_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            level_depth=(0, 4, 4, 0),
            middle_depth=4,
            model_channels=384,
            context_dim=1280,
            num_heads=None,
            num_head_channels=64,
            use_linear_in_transformer=True,
            adm_in_channels=2560,
        )

    @classmethod
    def tiny(cls, *, in_channels: int = 4, context_dim: int = 32) -> UNetConfig:
        """SD1-shaped test model: 2 levels of 32/64 channels, one res block each, 8 heads, conv proj."""
        return cls.from_levels(
            channel_mult=(1, 2),
            num_res_blocks=1,
            level_depth=(1, 1),
            middle_depth=1,
            in_channels=in_channels,
            model_channels=32,
            context_dim=context_dim,
            num_heads=8,
        )

    @classmethod
    def tiny_sd2(cls, *, in_channels: int = 4, context_dim: int = 32) -> UNetConfig:
        """SD2-shaped test model: linear proj, 64-channel heads (one head per block at this size)."""
        return dataclasses.replace(
            cls.tiny(in_channels=in_channels, context_dim=context_dim),
            num_heads=None,
            num_head_channels=64,
            use_linear_in_transformer=True,
        )

    @classmethod
    def tiny_sdxl(cls, *, context_dim: int = 64, pooled_dim: int = 32) -> UNetConfig:
        """SDXL-shaped test model: no transformer at level 0, depth 2 below, ADM = pooled + 6*256."""
        return cls.from_levels(
            channel_mult=(1, 2),
            num_res_blocks=1,
            level_depth=(0, 2),
            middle_depth=2,
            model_channels=32,
            context_dim=context_dim,
            num_heads=None,
            num_head_channels=64,
            use_linear_in_transformer=True,
            adm_in_channels=pooled_dim + 6 * 256,
        )

    @classmethod
    def tiny_sdxl_refiner(cls, *, context_dim: int = 32, pooled_dim: int = 32) -> UNetConfig:
        """SDXL-refiner-shaped test model: ADM = pooled + 5*256 (size, crop, aesthetic score)."""
        return dataclasses.replace(
            cls.tiny_sdxl(context_dim=context_dim, pooled_dim=pooled_dim),
            adm_in_channels=pooled_dim + 5 * 256,
        )


def build_transformer(
    config: UNetConfig, ch: int, depth: int, fk: dict[str, Any], level: int | None = None
) -> SpatialTransformer:
    """``level``: the UNet level (None: the middle block), for ``disable_self_attentions``."""
    heads, dim_head = config.heads_for(ch)
    flags = config.disable_self_attentions
    no_self = bool(flags and level is not None and flags[level])
    return SpatialTransformer(
        ch,
        heads,
        dim_head,
        depth,
        config.context_dim,
        use_linear=config.use_linear_in_transformer,
        disable_self_attn=no_self,
        **fk,
    )


def build_embeddings(config: UNetConfig, fk: dict[str, Any]) -> tuple[nn.Sequential, nn.Module | None]:
    """`time_embed` and, for SDXL-style models, `label_emb` (shared by the UNet and ControlNet)."""
    mc = config.model_channels
    ted = mc * 4
    time_embed = nn.Sequential(nn.Linear(mc, ted, **fk), nn.SiLU(), nn.Linear(ted, ted, **fk))
    label_emb: nn.Module | None = None
    if config.num_classes is not None:
        # A class table (key label_emb.weight): the x4 upscaler's noise level, an integer 0..999.
        label_emb = nn.Embedding(config.num_classes, ted, **fk)
    elif config.adm_in_channels is not None:
        # Key layout label_emb.0.0 / label_emb.0.2: SGM's num_classes="sequential" wraps the MLP twice.
        label_emb = nn.Sequential(
            nn.Sequential(nn.Linear(config.adm_in_channels, ted, **fk), nn.SiLU(), nn.Linear(ted, ted, **fk))
        )
    return time_embed, label_emb


def build_input_blocks(config: UNetConfig, fk: dict[str, Any]) -> tuple[nn.ModuleList, list[int]]:
    """The encoder half (`input_blocks.N`), and the channel count each block outputs: the UNet's skip
    connections, and the ControlNet's zero convolutions, follow these one to one."""
    mc = config.model_channels
    ted = mc * 4
    blocks = nn.ModuleList([TimestepBlock([nn.Conv2d(config.in_channels, mc, 3, padding=1, **fk)])])
    channels = [mc]
    ch = mc
    depth_in = iter(config.transformer_depth)
    last = len(config.channel_mult) - 1
    for level, mult in enumerate(config.channel_mult):
        for _ in range(config.num_res_blocks[level]):
            layers: list[nn.Module] = [ResBlock(ch, ted, mc * mult, **fk)]
            ch = mc * mult
            depth = next(depth_in)
            if depth > 0:
                layers.append(build_transformer(config, ch, depth, fk, level))
            blocks.append(TimestepBlock(layers))
            channels.append(ch)
        if level != last:
            blocks.append(TimestepBlock([Downsample(ch, ch, **fk)]))
            channels.append(ch)
    return blocks, channels


def build_middle_block(config: UNetConfig, ch: int, fk: dict[str, Any]) -> TimestepBlock:
    ted = config.model_channels * 4
    mid: list[nn.Module] = [ResBlock(ch, ted, ch, **fk)]
    if config.transformer_depth_middle is not None:
        mid += [
            build_transformer(config, ch, config.transformer_depth_middle, fk),
            ResBlock(ch, ted, ch, **fk),
        ]
    return TimestepBlock(mid)


class UNetModel(nn.Module):
    """The LDM/SGM UNet; see the module docstring for the forward contract."""

    def __init__(self, config: UNetConfig, dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        self.config = config
        # The dtype the UNet computes in when its weights are stored otherwise (quantized layers that
        # dequantize in forward); None: the dtype of its weights.
        self.compute_dtype: torch.dtype | None = None
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        mc = config.model_channels
        ted = mc * 4
        self.time_embed, self.label_emb = build_embeddings(config, fk)
        self.input_blocks, skip_channels = build_input_blocks(config, fk)
        ch = skip_channels[-1]
        self.middle_block: TimestepBlock | None = (
            build_middle_block(config, ch, fk) if config.middle_block else None
        )

        self.output_blocks = nn.ModuleList()
        depth_out = iter(config.transformer_depth_output)
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks[level] + 1):
                layers: list[nn.Module] = [ResBlock(ch + skip_channels.pop(), ted, mc * mult, **fk)]
                ch = mc * mult
                depth = next(depth_out)
                if depth > 0:
                    layers.append(build_transformer(config, ch, depth, fk, level))
                if level and i == config.num_res_blocks[level]:
                    layers.append(Upsample(ch, ch, **fk))
                self.output_blocks.append(TimestepBlock(layers))

        self.out = nn.Sequential(
            nn.GroupNorm(NORM_GROUPS, ch, **fk),
            nn.SiLU(),
            nn.Conv2d(mc, config.out_channels, 3, padding=1, **fk),
        )

    @property
    def dtype(self) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        first: nn.Linear = self.time_embed[0]  # type: ignore[assignment]
        return first.weight.dtype

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: Mapping[str, list[torch.Tensor | None]] | None = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """See the module docstring; "diffusion_model" wrappers in the options run around the call."""
        if transformer_options and "wrappers" in transformer_options:
            args = (x, timesteps, context, y, control, transformer_options)
            return call_wrapped("diffusion_model", transformer_options, self._forward, self, *args)  # type: ignore[no-any-return]
        return self._forward(x, timesteps, context, y, control, transformer_options)

    def _embedding(
        self,
        timesteps: torch.Tensor | float,
        y: torch.Tensor | None,
        batch: int,
        device: torch.device,
        emb_patches: Any,
        opts: dict[str, Any],
    ) -> torch.Tensor:
        """(B,) timesteps -> (B, model_channels) sinusoids -> (B, 4*model_channels) time embedding, patched
        by "emb_patch" functions, plus the ADM/label embedding of ``y`` (SDXL)."""
        dtype = self.dtype
        t = torch.as_tensor(timesteps, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        for fn in emb_patches:
            emb = fn(emb, self.config.model_channels, opts)
        if self.label_emb is not None:
            if y is None:
                raise ValueError(
                    "UNetModel: this UNet has an ADM/label embedding (SDXL); pass y, e.g. built with "
                    "engine.diffusion.models.sdxl_conditioning.sdxl_adm"
                )
            # y: (B, adm_in_channels) -> (B, 4*model_channels); class labels (B,) stay integers.
            label = y.long() if isinstance(self.label_emb, nn.Embedding) else y.to(dtype)
            emb = emb + self.label_emb(label)
        return emb  # type: ignore[no-any-return]

    def _forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: Mapping[str, list[torch.Tensor | None]] | None = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        dtype = self.dtype
        out_dtype = x.dtype
        batch = x.shape[0]
        # A private copy: the blocks record where they are ("block", "block_index", ...) in it.
        opts: dict[str, Any] = dict(transformer_options or {})
        opts["original_shape"] = list(x.shape)
        opts["transformer_index"] = 0
        hooks: dict[str, Any] = opts.get("patches") or {}
        ctrl = {k: list(v) for k, v in control.items() if v is not None} if control else {}

        def add_control(h: torch.Tensor, name: str) -> torch.Tensor:
            lst = ctrl.get(name)
            if lst:
                residual = lst.pop()
                if residual is not None:
                    h = h + residual.to(h.dtype)
            return h

        def patch(h: torch.Tensor, name: str) -> torch.Tensor:
            for fn in hooks.get(name, ()):
                h = fn(h, opts)
            return h

        emb = self._embedding(timesteps, y, batch, x.device, hooks.get("emb_patch", ()), opts)
        if context is not None:
            context = context.to(dtype)  # (B, T, context_dim)
        elif self.config.has_transformers:
            raise ValueError("UNetModel: this UNet has cross-attention; pass context (text tokens)")

        h = x.to(dtype)  # (B, in_channels, h, w)
        hs: list[torch.Tensor] = []
        # Each level: (B, C, H, W) -> (B, C', H, W); each downsampler halves H and W.
        # The patch points and their order are ComfyUI's (openaimodel.UNetModel); "block_output" is ours.
        for i, block in enumerate(self.input_blocks):
            opts["block"] = ("input", i)
            h = block(h, emb, context, transformer_options=opts)
            h = add_control(h, "input")
            h = patch(patch(h, "input_block_patch"), "block_output")
            hs.append(h)
            h = patch(h, "input_block_patch_after_skip")
        opts["block"] = ("middle", 0)
        if self.middle_block is not None:
            h = self.middle_block(h, emb, context, transformer_options=opts)
        h = add_control(h, "middle")
        h = patch(h, "block_output")
        for i, block in enumerate(self.output_blocks):
            opts["block"] = ("output", i)
            skip = add_control(hs.pop(), "output")
            for fn in hooks.get("output_block_patch", ()):
                h, skip = fn(h, skip, opts)
            h = torch.cat([h, skip], dim=1)  # (B, C, H, W) + (B, C_skip, H, W) -> (B, C + C_skip, H, W)
            size = tuple(hs[-1].shape[-2:]) if hs else None
            h = block(h, emb, context, size, transformer_options=opts)
            h = patch(h, "block_output")
        norm, _, conv = self.out
        h = conv(torch.nn.functional.silu(norm(h)))  # (B, model_channels, h, w) -> (B, out_channels, h, w)
        return h.to(out_dtype)
