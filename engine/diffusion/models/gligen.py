"""GLIGEN grounding for the SD UNet: boxes with phrases steer where things appear.

"GLIGEN: Open-Set Grounded Text-to-Image Generation" (Li et al. 2023). A position net turns each box
(x0, y0, x1, y1 in 0..1, Fourier-embedded) and its phrase's CLIP text embedding into a grounding token;
every transformer block of the UNet gets a gated self-attention layer (the "fuser") that attends over
[image tokens, grounding tokens] and adds ``tanh(alpha) * result`` to the image tokens, between the
block's self- and cross-attention. With both gates at zero the UNet is unchanged.

File layout (ComfyUI's ``gligen`` folder, e.g. ``gligen_sd14_textbox_pruned.safetensors``): the fusers
under ``<input_blocks|middle_block|output_blocks>.N.1.transformer_blocks.0.fuser.*`` (optionally
prefixed), in UNet order, and the position net under ``position_net.*``. Each fuser is applied to the
transformer of the same running index ("transformer_index") through a "middle_patch", as ComfyUI does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .unet_blocks import CrossAttention, FeedForward

MAX_OBJECTS = 30  # grounding tokens per image (ComfyUI's and the paper's max_objs)
FOURIER_FREQS = 8
POSITION_DIM = FOURIER_FREQS * 2 * 4  # sin and cos of 8 frequencies for each of x0, y0, x1, y1

_FUSER_KEY = re.compile(r"(?:^|\.)(input_blocks|middle_block|output_blocks)\.(\d+)\..*?\.fuser\.(.+)$")
_BLOCK_ORDER = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}


def fourier_embed(
    boxes: torch.Tensor, freqs: int = FOURIER_FREQS, temperature: float = 100.0
) -> torch.Tensor:
    """(..., 4) box coordinates -> (..., 8 * freqs): [sin(f0 x), cos(f0 x), sin(f1 x), ...] per frequency
    f_k = temperature ** (k / freqs), each block covering the 4 coordinates."""
    bands = temperature ** (torch.arange(freqs, dtype=torch.float32) / freqs)
    parts: list[torch.Tensor] = []
    for f in bands.tolist():
        parts += [torch.sin(f * boxes), torch.cos(f * boxes)]
    return torch.cat(parts, dim=-1)


class PositionNet(nn.Module):
    """Grounding tokens from (boxes, masks, phrase embeddings); padded slots get learned null features."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.linears = nn.Sequential(
            nn.Linear(in_dim + POSITION_DIM, hidden, **fk),
            nn.SiLU(),
            nn.Linear(hidden, hidden, **fk),
            nn.SiLU(),
            nn.Linear(hidden, out_dim, **fk),
        )
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim, **fk))
        self.null_position_feature = nn.Parameter(torch.zeros(POSITION_DIM, **fk))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        # boxes (B, N, 4), masks (B, N), embeddings (B, N, in_dim) -> (B, N, out_dim)
        m = masks.unsqueeze(-1).to(embeddings.dtype)
        xyxy = fourier_embed(boxes.float()).to(embeddings.dtype)
        null_pos = self.null_positive_feature.to(embeddings).view(1, 1, -1)
        null_xyxy = self.null_position_feature.to(embeddings).view(1, 1, -1)
        embeddings = embeddings * m + (1 - m) * null_pos
        xyxy = xyxy * m + (1 - m) * null_xyxy
        return self.linears(torch.cat([embeddings, xyxy], dim=-1))  # type: ignore[no-any-return]


class GatedSelfAttention(nn.Module):
    """One fuser: x += tanh(alpha_attn) * SelfAttn(norm1([x, linear(objs)]))[:N];
    x += tanh(alpha_dense) * FF(norm2(x))."""

    def __init__(self, query_dim: int, key_dim: int, heads: int, dim_head: int, *, dtype=None, device=None):
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.linear = nn.Linear(key_dim, query_dim, **fk)
        self.attn = CrossAttention(query_dim, heads, dim_head, query_dim, **fk)
        self.ff = FeedForward(query_dim, **fk)
        self.norm1 = nn.LayerNorm(query_dim, **fk)
        self.norm2 = nn.LayerNorm(query_dim, **fk)
        self.alpha_attn = nn.Parameter(torch.zeros((), **fk))
        self.alpha_dense = nn.Parameter(torch.zeros((), **fk))

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        n_visual = x.shape[1]  # x (B, N, C) image tokens; objs (B, M, key_dim) grounding tokens
        tokens = torch.cat([x, self.linear(objs)], dim=1)
        x = x + torch.tanh(self.alpha_attn) * self.attn(self.norm1(tokens))[:, :n_visual]
        return x + torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


def _heads(query_dim: int, key_dim: int) -> tuple[int, int]:
    # The head layout is not stored; ComfyUI's rule: 8 heads for SD1's 768-wide grounding tokens,
    # 64-channel heads otherwise (at least one head for test-size widths).
    if key_dim == 768:
        return 8, query_dim // 8
    heads = max(1, query_dim // 64)
    return heads, query_dim // heads


class Gligen(nn.Module):
    """The fusers (``module_list``, in UNet transformer order) and the position net."""

    def __init__(self, fusers: Sequence[GatedSelfAttention], position_net: PositionNet, in_dim: int):
        super().__init__()
        self.module_list = nn.ModuleList(list(fusers))
        self.position_net = position_net
        self.in_dim = in_dim  # width of the phrase embeddings (the CLIP pooled vector)

    def grounding_tokens(self, batch: int, h: int, w: int, params: Sequence[Sequence[Any]]) -> torch.Tensor:
        """(batch, MAX_OBJECTS, key_dim) tokens for boxes given as ComfyUI's position params
        ``(embedding (1, in_dim), height, width, y, x)`` in latent pixels of an ``h`` x ``w`` latent."""
        p = next(self.position_net.parameters())
        boxes = torch.zeros(MAX_OBJECTS, 4)
        masks = torch.zeros(MAX_OBJECTS)
        embeds = torch.zeros(MAX_OBJECTS, self.in_dim)
        for i, (emb, bh, bw, by, bx) in enumerate(list(params)[:MAX_OBJECTS]):
            boxes[i] = torch.tensor([bx / w, by / h, (bx + bw) / w, (by + bh) / h])
            masks[i] = 1.0
            embeds[i] = torch.as_tensor(emb).float().reshape(-1)[: self.in_dim]
        with torch.no_grad():
            objs = self.position_net(
                boxes.expand(batch, -1, -1).to(p.device),
                masks.expand(batch, -1).to(p.device),
                embeds.expand(batch, -1, -1).to(p.device, p.dtype),
            )
        return objs

    def middle_patch(self, objs: torch.Tensor) -> Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]:
        """The UNet "middle_patch" that runs the fuser of the current transformer on its tokens."""

        def patch(x: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
            index = int(extra.get("transformer_index", 0))
            if index >= len(self.module_list):
                return x
            fuser = self.module_list[index]
            p = next(fuser.parameters())
            out = fuser(x.to(p.device, p.dtype), objs.to(p.device, p.dtype))
            return out.to(x.device, x.dtype)  # type: ignore[no-any-return]

        return patch


def split_gligen_state_dict(
    sd: Mapping[str, torch.Tensor],
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """(one state dict per fuser in UNet order, the position net's) from a GLIGEN file's keys."""
    groups: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = _FUSER_KEY.search(key)
        if m:
            groups.setdefault((_BLOCK_ORDER[m.group(1)], int(m.group(2))), {})[m.group(3)] = value
    position = {k.split("position_net.", 1)[1]: v for k, v in sd.items() if "position_net." in k}
    return [groups[k] for k in sorted(groups)], position


def build_gligen(sd: Mapping[str, torch.Tensor], *, dtype: torch.dtype = torch.float32) -> Gligen:
    """A `Gligen` from a GLIGEN file's state dict; ValueError naming what is missing otherwise."""
    fuser_sds, pos_sd = split_gligen_state_dict(sd)
    if not fuser_sds or "null_positive_feature" not in pos_sd or "linears.4.weight" not in pos_sd:
        sample = ", ".join(sorted(sd)[:4])
        raise ValueError(
            "not a GLIGEN model: expected '...transformer_blocks.0.fuser.*' and 'position_net.*' keys "
            f"(keys start: {sample})"
        )
    fusers: list[GatedSelfAttention] = []
    for fsd in fuser_sds:
        query_dim, key_dim = (int(s) for s in fsd["linear.weight"].shape)
        heads, dim_head = _heads(query_dim, key_dim)
        fuser = GatedSelfAttention(query_dim, key_dim, heads, dim_head, dtype=dtype)
        fuser.load_state_dict({k: v.to(dtype) for k, v in fsd.items()}, strict=True)
        fusers.append(fuser)
    in_dim = int(pos_sd["null_positive_feature"].shape[0])
    net = PositionNet(
        in_dim,
        int(pos_sd["linears.4.weight"].shape[0]),
        int(pos_sd["linears.0.weight"].shape[0]),
        dtype=dtype,
    )
    net.load_state_dict({k: v.to(dtype) for k, v in pos_sd.items()}, strict=True)
    model = Gligen(fusers, net, in_dim)
    model.requires_grad_(False)
    return model.eval()
