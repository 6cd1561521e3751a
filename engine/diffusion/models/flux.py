"""FLUX.1 (dev, schnell), the rectified-flow transformer of Black Forest Labs, in plain torch.

Architecture (BFL's reference ``flux/model.py``): the latent is cut into 2x2 patches (64 features per
token), text tokens come from T5 (``txt_in``), and a conditioning vector ``vec`` sums the timestep
embedding, the pooled CLIP-L embedding (``vector_in``) and, for guidance-distilled dev, an embedding of the
guidance scale (``guidance_in``). ``double_blocks`` keep separate image/text weights and attend jointly;
``single_blocks`` run one stream over [text; image] with attention and MLP fused into ``linear1``/
``linear2``. Positions are 3-axis RoPE over ids (t, h, w): text tokens have id (0, 0, 0), image token
(i, j) has (0, i, j).

Parameter names are the original keys without ``model.diffusion_model.``: ``img_in``, ``txt_in``,
``time_in.in_layer/out_layer``, ``vector_in.*``, ``guidance_in.*``, ``double_blocks.N.{img_mod.lin,
img_attn.qkv, img_attn.norm.query_norm.scale, img_attn.norm.key_norm.scale, img_attn.proj, img_mlp.0,
img_mlp.2, txt_*}``, ``single_blocks.N.{linear1, linear2, norm.query_norm.scale, norm.key_norm.scale,
modulation.lin}``, ``final_layer.{adaLN_modulation.1, linear}``.

Forward contract: ``Flux.forward(x, timesteps, context, y, guidance=None)``

- ``x``: latents (B, in_channels, H, W) (padded circularly to even sides, output cropped back);
  ``timesteps``: (B,) sigmas in 0..1 (embedded as ``1000 * t``, like the reference);
  ``context``: T5 tokens (B, L, context_in_dim); ``y``: pooled CLIP-L (B, vec_in_dim);
  ``guidance``: (B,) guidance scale, used only by models with ``guidance_in`` (ignored when None).
- Inputs are cast to the model's dtype; the output has ``x``'s dtype and shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from engine.kernels.attention import attention as fast_attention

from .dit_layers import layer_norm, merge_heads, modulate, pad_to_patch, rms_norm, split_heads
from .unet_blocks import timestep_embedding

TIMESTEP_FEATURES = 256
# The reference embeds t and the guidance scale in the 0..1000 range.
TIME_FACTOR = 1000.0


@dataclass(frozen=True)
class FluxConfig:
    in_channels: int = 16  # latent channels; img_in sees in_channels * patch_size**2 features
    out_channels: int = 16
    patch_size: int = 2
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)  # RoPE channels per id axis (t, h, w); sums to the head size
    theta: float = 10000.0
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"FluxConfig: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}"
            )
        if sum(self.axes_dim) != self.hidden_size // self.num_heads or any(d % 2 for d in self.axes_dim):
            raise ValueError(
                f"FluxConfig: axes_dim {self.axes_dim} must be even and sum to the head size "
                f"{self.hidden_size // self.num_heads}"
            )

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def replace(self, **changes: Any) -> FluxConfig:
        return dataclasses.replace(self, **changes)


FLUX_DEV = FluxConfig()
FLUX_SCHNELL = FluxConfig(guidance_embed=False)
# Test size: two 16-channel heads (RoPE 4 + 6 + 6), one block of each kind.
TINY = FluxConfig(
    vec_in_dim=24,
    context_in_dim=40,
    hidden_size=32,
    num_heads=2,
    depth=1,
    depth_single_blocks=2,
    axes_dim=(4, 6, 6),
)
TINY_SCHNELL = TINY.replace(guidance_embed=False)


def rope(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation angles for ids (B, L, n_axes) -> cos, sin, each (B, 1, L, head_dim/2), float32.

    Axis ``a`` owns ``axes_dim[a] / 2`` consecutive rotation pairs with frequencies
    ``theta ** (-2i / axes_dim[a])``; angles are computed in float64 as the reference does.
    """
    angles = []
    for axis, dim in enumerate(axes_dim):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles.append(ids[..., axis].to(torch.float64)[..., None] * freqs)  # (B, L, dim/2)
    a = torch.cat(angles, dim=-1)[:, None]
    return a.cos().float(), a.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (x[2i], x[2i+1]) of x (B, heads, L, d) by the given angles."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((cos * a - sin * b, sin * a + cos * b), dim=-1)
    return out.flatten(-2).to(x.dtype)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """RoPE on q/k, then softmax attention; (B, heads, L, d) each -> (B, L, heads*d)."""
    q, k = apply_rope(q, *pe), apply_rope(k, *pe)
    return merge_heads(fast_attention(q, k, v))


class MLPEmbedder(nn.Module):
    def __init__(self, cin: int, hidden: int, fk: dict[str, Any]):
        super().__init__()
        self.in_layer = nn.Linear(cin, hidden, **fk)
        self.out_layer = nn.Linear(hidden, hidden, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))  # (B, cin) -> (B, hidden)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, fk: dict[str, Any]):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale)


class QKNorm(nn.Module):
    def __init__(self, head_dim: int, fk: dict[str, Any]):
        super().__init__()
        self.query_norm = RMSNorm(head_dim, fk)
        self.key_norm = RMSNorm(head_dim, fk)


class Modulation(nn.Module):
    """``lin`` on silu(vec): 6 chunks (shift, scale, gate for attention, then for the MLP) or 3."""

    def __init__(self, dim: int, chunks: int, fk: dict[str, Any]):
        super().__init__()
        self.chunks = chunks
        self.lin = nn.Linear(dim, chunks * dim, **fk)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(F.silu(vec)).chunk(self.chunks, dim=1)  # chunks x (B, dim)


class StreamAttention(nn.Module):
    """``qkv`` projection, per-head q/k RMS norm (``norm``), output ``proj``."""

    def __init__(self, cfg: FluxConfig, fk: dict[str, Any]):
        super().__init__()
        dim = cfg.hidden_size
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=cfg.qkv_bias, **fk)
        self.norm = QKNorm(dim // cfg.num_heads, fk)
        self.proj = nn.Linear(dim, dim, **fk)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, dim) -> q, k, v, each (B, heads, N, dim/heads)."""
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.norm.query_norm(q), self.norm.key_norm(k), v


def _finite_fp16(x: torch.Tensor) -> torch.Tensor:
    """fp16 text activations overflow in late blocks of real Flux weights; ComfyUI maps inf to +-65504."""
    if x.dtype != torch.float16:
        return x
    return torch.nan_to_num(x, nan=0.0, posinf=65504.0, neginf=-65504.0)


def _mlp(cfg: FluxConfig, fk: dict[str, Any]) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(cfg.hidden_size, cfg.mlp_hidden, **fk),
        nn.GELU(approximate="tanh"),
        nn.Linear(cfg.mlp_hidden, cfg.hidden_size, **fk),
    )


class DoubleStreamBlock(nn.Module):
    def __init__(self, cfg: FluxConfig, fk: dict[str, Any]):
        super().__init__()
        dim = cfg.hidden_size
        self.img_mod = Modulation(dim, 6, fk)
        self.img_attn = StreamAttention(cfg, fk)
        self.img_mlp = _mlp(cfg, fk)
        self.txt_mod = Modulation(dim, 6, fk)
        self.txt_attn = StreamAttention(cfg, fk)
        self.txt_mlp = _mlp(cfg, fk)

    def forward(
        self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, pe: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # img: (B, N, dim); txt: (B, L, dim); vec: (B, dim); pe over the L+N tokens, text first.
        im = self.img_mod(vec)
        tm = self.txt_mod(vec)
        iq, ik, iv = self.img_attn.qkv_heads(modulate(layer_norm(img), im[0], im[1]))
        tq, tk, tv = self.txt_attn.qkv_heads(modulate(layer_norm(txt), tm[0], tm[1]))
        q, k, v = (torch.cat(pair, dim=2) for pair in ((tq, iq), (tk, ik), (tv, iv)))
        del iq, ik, iv, tq, tk, tv  # views of the qkv projections: freed before attention runs
        joint = attention(q, k, v, pe)  # (B, L+N, dim)
        del q, k, v
        n_txt = txt.shape[1]
        # Both attention outputs first, so the joint tensor is freed before the MLPs run (lower peak).
        img = img + im[2][:, None] * self.img_attn.proj(joint[:, n_txt:])
        txt = txt + tm[2][:, None] * self.txt_attn.proj(joint[:, :n_txt])
        del joint
        img = img + im[5][:, None] * self.img_mlp(modulate(layer_norm(img), im[3], im[4]))
        txt = txt + tm[5][:, None] * self.txt_mlp(modulate(layer_norm(txt), tm[3], tm[4]))
        return img, _finite_fp16(txt)


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP: ``linear1`` gives q, k, v and the MLP input; ``linear2`` merges both."""

    def __init__(self, cfg: FluxConfig, fk: dict[str, Any]):
        super().__init__()
        dim = cfg.hidden_size
        self.heads = cfg.num_heads
        self.split = (3 * dim, cfg.mlp_hidden)
        self.linear1 = nn.Linear(dim, 3 * dim + cfg.mlp_hidden, **fk)
        self.linear2 = nn.Linear(dim + cfg.mlp_hidden, dim, **fk)
        self.norm = QKNorm(dim // cfg.num_heads, fk)
        self.modulation = Modulation(dim, 3, fk)

    def forward(
        self, x: torch.Tensor, vec: torch.Tensor, pe: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1(modulate(layer_norm(x), shift, scale)).split(self.split, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))  # (B, heads, L+N, d)
        # Nothing may view linear1's (wide) output during attention, so that it is freed first: the
        # normed q/k and the MLP activation are new tensors, v is copied out.
        q, k, v = self.norm.query_norm(q), self.norm.key_norm(k), v.contiguous()
        mlp = F.gelu(mlp, approximate="tanh")
        del qkv
        attn = attention(q, k, v, pe)  # (B, L+N, dim)
        del q, k, v
        out = self.linear2(torch.cat((attn, mlp), dim=-1))
        return _finite_fp16(x + gate[:, None] * out)


class LastLayer(nn.Module):
    def __init__(self, cfg: FluxConfig, fk: dict[str, Any]):
        super().__init__()
        dim = cfg.hidden_size
        self.linear = nn.Linear(dim, cfg.patch_size**2 * cfg.out_channels, **fk)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, **fk))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation[1](F.silu(vec)).chunk(2, dim=1)
        return self.linear(modulate(layer_norm(x), shift, scale))  # (B, N, dim) -> (B, N, p*p*C_out)


def image_ids(
    b: int, h: int, w: int, device: Any = None, *, index: int = 0, top: int = 0, left: int = 0
) -> torch.Tensor:
    """Ids (B, h*w, 3) of an h x w patch grid in row-major order: (index, top + row, left + column)."""
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h, device=device)[:, None] + top
    ids[..., 2] = torch.arange(w, device=device)[None, :] + left
    return ids.reshape(1, h * w, 3).expand(b, -1, -1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, ceil(H/p) * ceil(W/p), C*p*p) tokens (padded circularly), channel-major patches."""
    x = pad_to_patch(x, p)
    b, c, hh, ww = x.shape
    h, w = hh // p, ww // p
    return x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)


def reference_placement(
    shapes: list[tuple[int, int]], grid: tuple[int, int], p: int, method: str
) -> list[tuple[int, int, int]]:
    """(index, top, left) ids of each Kontext reference latent, offsets in patches (ComfyUI's Flux scheme).

    ``shapes``: the references' latent sizes (h, w); ``grid``: the sampled latent's patch grid. "offset"
    (default): index 1, each reference placed after the previous ones along the side that keeps the
    layout squarer; "index": no offset, index 1, 2, 3...; "uxo": index 0, placed diagonally past the
    sampled image and the references before it. Offsets are latent pixels rounded to patches."""
    out = []
    h = w = index = 0
    for rh, rw in shapes:
        top = left = 0
        if method == "index":
            index += 1
        elif method == "uxo":
            index, top, left = 0, grid[0] * p + h, grid[1] * p + w
            h, w = h + rh, w + rw
        else:
            index = 1
            if rh + h > rw + w:
                left = w
            else:
                top = h
            h, w = max(h, rh + top), max(w, rw + left)
        out.append((index, (top + p // 2) // p, (left + p // 2) // p))
    return out


class Flux(nn.Module):
    def __init__(self, config: FluxConfig, dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        dim = config.hidden_size
        self.img_in = nn.Linear(config.in_channels * config.patch_size**2, dim, **fk)
        self.time_in = MLPEmbedder(TIMESTEP_FEATURES, dim, fk)
        self.vector_in = MLPEmbedder(config.vec_in_dim, dim, fk)
        self.guidance_in = MLPEmbedder(TIMESTEP_FEATURES, dim, fk) if config.guidance_embed else None
        self.txt_in = nn.Linear(config.context_in_dim, dim, **fk)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(config, fk) for _ in range(config.depth)])
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(config, fk) for _ in range(config.depth_single_blocks)]
        )
        self.final_layer = LastLayer(config, fk)

    @property
    def dtype(self) -> torch.dtype:
        # The bias: fp8 storage (engine.memory.dtypes.store_weights_as) converts matmul weights only.
        return self.img_in.bias.dtype

    def _embed_time(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t * TIME_FACTOR, TIMESTEP_FEATURES).to(self.dtype)  # (B,) -> (B, 256)

    def forward_tokens(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | None = None,
        blocks_replace: Mapping[tuple[str, int], Any] | None = None,
    ) -> torch.Tensor:
        """Packed tokens in, packed tokens out: img (B, N, C*p*p) with ids (B, N, 3), txt (B, L, ctx).

        ``blocks_replace``: ComfyUI's "dit" block patches run instead of a block, ``("double_block", i)``:
        ``fn({"img", "txt", "vec", "pe", "attn_mask"}, {"original_block": f}) -> {"img", "txt"}``,
        ``("single_block", i)``: ``fn({"img", "vec", "pe", "attn_mask"}, ...) -> {"img"}`` (img = the
        joint text + image sequence there); skip-layer guidance returns the input unchanged."""
        vec = self.time_in(self._embed_time(timesteps))  # (B, dim)
        if self.guidance_in is not None and guidance is not None:
            vec = vec + self.guidance_in(self._embed_time(guidance))
        vec = vec + self.vector_in(y)
        x = self.img_in(img)  # (B, N, dim)
        ctx = self.txt_in(txt)  # (B, L, dim)
        pe = rope(torch.cat((txt_ids, img_ids), dim=1), self.config.axes_dim, self.config.theta)
        replace = blocks_replace or {}
        for i, block in enumerate(self.double_blocks):
            if ("double_block", i) in replace:
                x, ctx = _replaced_double(replace[("double_block", i)], block, x, ctx, vec, pe)
            else:
                x, ctx = block(x, ctx, vec, pe)
        joint = torch.cat((ctx, x), dim=1)  # (B, L+N, dim)
        for i, single in enumerate(self.single_blocks):
            if ("single_block", i) in replace:
                joint = _replaced_single(replace[("single_block", i)], single, joint, vec, pe)
            else:
                joint = single(joint, vec, pe)
        return self.final_layer(joint[:, ctx.shape[1] :], vec)  # (B, N, p*p*C_out)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | None = None,
        blocks_replace: Mapping[tuple[str, int], Any] | None = None,
        ref_latents: list[torch.Tensor] | None = None,
        ref_method: str = "offset",
    ) -> torch.Tensor:
        """``ref_latents``: Kontext reference latents (each (B or 1, C, h, w), in model space), appended as
        extra image tokens with the ids of `reference_placement`; only the sampled tokens are returned."""
        out_dtype = x.dtype
        b, _, height, width = x.shape
        p = self.config.patch_size
        h, w = -(-height // p), -(-width // p)
        img = patchify(x.to(self.dtype), p)  # (B, h*w, C*p*p)
        ids = image_ids(b, h, w, x.device)
        if ref_latents:
            shapes = [(int(r.shape[-2]), int(r.shape[-1])) for r in ref_latents]
            placed = reference_placement(shapes, (h, w), p, ref_method)
            refs = [patchify(_batch_to(r.to(x.device, self.dtype), b), p) for r in ref_latents]
            ref_ids = [
                image_ids(b, -(-rh // p), -(-rw // p), x.device, index=i, top=t, left=le)
                for (rh, rw), (i, t, le) in zip(shapes, placed, strict=True)
            ]
            img, ids = torch.cat([img, *refs], dim=1), torch.cat([ids, *ref_ids], dim=1)
        txt_ids = torch.zeros(b, context.shape[1], 3, device=x.device)
        t = timesteps.reshape(-1).expand(b) if timesteps.numel() == 1 else timesteps
        g = None
        if guidance is not None:
            g = guidance.reshape(-1).expand(b) if guidance.numel() == 1 else guidance
        out = self.forward_tokens(
            img,
            ids,
            context.to(self.dtype),
            txt_ids,
            t,
            y.to(self.dtype),
            g,
            blocks_replace=blocks_replace,
        )
        co = self.config.out_channels
        out = (
            out[:, : h * w].reshape(b, h, w, co, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, co, h * p, w * p)
        )
        return out[:, :, :height, :width].to(out_dtype)


def _batch_to(t: torch.Tensor, b: int) -> torch.Tensor:
    """Repeat (or cut) a batch to b items, as ComfyUI's repeat_to_batch_size for reference latents."""
    if t.shape[0] == b:
        return t
    return t.repeat(-(-b // t.shape[0]), 1, 1, 1)[:b]


def _replaced_double(
    fn: Any, block: nn.Module, x: torch.Tensor, ctx: torch.Tensor, vec: torch.Tensor, pe: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    def original(args: dict[str, Any]) -> dict[str, Any]:
        img, txt = block(args["img"], args["txt"], args["vec"], args["pe"])
        return {"img": img, "txt": txt}

    out = fn({"img": x, "txt": ctx, "vec": vec, "pe": pe, "attn_mask": None}, {"original_block": original})
    return out["img"], out["txt"]


def _replaced_single(
    fn: Any, block: nn.Module, joint: torch.Tensor, vec: torch.Tensor, pe: Any
) -> torch.Tensor:
    def original(args: dict[str, Any]) -> dict[str, Any]:
        return {"img": block(args["img"], args["vec"], args["pe"])}

    out = fn({"img": joint, "vec": vec, "pe": pe, "attn_mask": None}, {"original_block": original})
    return out["img"]
