"""Style models: networks that turn a vision tower's tokens into extra prompt tokens (ComfyUI's STYLE_MODEL).

- **T2I-Adapter style** (Mou et al. 2023, TencentARC ``t2iadapter_style_sd14v1``): learned style tokens
  appended to CLIP ViT-L's last hidden state, a few OpenAI-CLIP residual attention blocks, and the style
  tokens projected to the text width (768 for SD1). Keys: ``style_embedding`` (1, tokens, width), ``ln_pre``,
  ``transformer_layes.N.{attn.in_proj_*,attn.out_proj,ln_1,ln_2,mlp.c_fc,mlp.c_proj}`` (sic), ``ln_post``,
  ``proj`` (width x context, applied as ``x @ proj``). 8 heads (the release's, not in any shape).
- **FLUX.1 Redux** (Black Forest Labs): SigLIP tokens -> ``redux_up`` (to 3 x the T5 width) -> SiLU ->
  ``redux_down`` (to the T5 width, 4096 for FLUX.1).

Both take the vision output's ``last_hidden_state`` (B, tokens, width) and return (B, new tokens, context).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STYLE_ADAPTER_HEADS = 8


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


class _QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _quick_gelu(x)


class _ResidualAttentionBlock(nn.Module):
    """OpenAI CLIP's block: sequence-first ``nn.MultiheadAttention`` (so the keys are ``attn.in_proj_*``)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", _QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))  # type: ignore[no-any-return]


class StyleAdapter(nn.Module):
    def __init__(
        self, width: int, context_dim: int, layers: int, tokens: int, heads: int = STYLE_ADAPTER_HEADS
    ):
        super().__init__()
        self.num_token = tokens
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer_layes = nn.Sequential(
            *[_ResidualAttentionBlock(width, heads) for _ in range(layers)]
        )
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, x: Tensor) -> Tensor:
        style = self.style_embedding.to(x.dtype).expand(x.shape[0], -1, -1)
        h = self.ln_pre(torch.cat([x, style], dim=1))
        h = self.transformer_layes(h.permute(1, 0, 2)).permute(1, 0, 2)  # blocks are sequence-first
        return self.ln_post(h[:, -self.num_token :]) @ self.proj  # type: ignore[no-any-return]


class ReduxImageEncoder(nn.Module):
    def __init__(self, redux_dim: int, txt_dim: int) -> None:
        super().__init__()
        self.redux_up = nn.Linear(redux_dim, txt_dim * 3)
        self.redux_down = nn.Linear(txt_dim * 3, txt_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.redux_down(F.silu(self.redux_up(x)))  # type: ignore[no-any-return]


def _layer_count(sd: Mapping[str, Tensor]) -> int:
    ids = {int(k.split(".")[1]) for k in sd if k.startswith("transformer_layes.")}
    return max(ids) + 1 if ids else 0


def build_style_model(sd: Mapping[str, Tensor]) -> nn.Module:
    """A style model from its state dict (kind and sizes from the keys and shapes); ValueError otherwise."""
    module: Any
    if "style_embedding" in sd:
        _, tokens, width = sd["style_embedding"].shape
        if width % STYLE_ADAPTER_HEADS:
            raise ValueError(f"style adapter width {width} is not divisible into {STYLE_ADAPTER_HEADS} heads")
        module = StyleAdapter(int(width), int(sd["proj"].shape[1]), _layer_count(sd), int(tokens))
    elif "redux_down.weight" in sd and "redux_up.weight" in sd:
        module = ReduxImageEncoder(int(sd["redux_up.weight"].shape[1]), int(sd["redux_down.weight"].shape[0]))
    else:
        sample = ", ".join(sorted(sd)[:5])
        raise ValueError(
            "not a style model this loader knows: expected 'style_embedding' (T2I-Adapter style) or "
            f"'redux_up.weight' / 'redux_down.weight' (FLUX.1 Redux); keys start: {sample}"
        )
    module.load_state_dict({k: v.float() for k, v in sd.items()})
    return module.eval()  # type: ignore[no-any-return]


def _grown_mask(opts: Mapping[str, Any], txt: Tensor, n: int, bias: float) -> Tensor:
    """The entry's (B, L, L) attention bias grown by ``n`` style tokens placed after the text tokens: the
    old mask's quadrants kept around them, the text and reference-image rows attending to them with
    ``bias`` (log strength; -inf at strength 0). A boolean mask becomes log(1)=0 / log(0)=-inf."""
    h, w = opts.get("attention_mask_img_shape", (1, 1))
    n_ref, n_txt, b = int(h) * int(w), txt.shape[1], txt.shape[0]
    mask = opts.get("attention_mask")
    if mask is None:
        mask = torch.zeros((b, n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    if mask.dtype == torch.bool:
        mask = torch.log(mask.to(torch.float16))
    new = torch.zeros((b, n_txt + n + n_ref, n_txt + n + n_ref), dtype=torch.float16)
    s = n_txt + n
    new[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
    new[:, :n_txt, s:] = mask[:, :n_txt, n_txt:]
    new[:, s:, :n_txt] = mask[:, n_txt:, :n_txt]
    new[:, s:, s:] = mask[:, n_txt:, n_txt:]
    new[:, :n_txt, n_txt:s] = bias
    new[:, s:, n_txt:s] = bias
    return new.to(txt.device)


def append_style_tokens(
    conditioning: list[list[Any]], tokens: Tensor, strength: float, strength_type: str
) -> list[list[Any]]:
    """ComfyUI's StyleModelApply on a CONDITIONING list: the style tokens of every image, flattened into
    one (1, images x tokens, context) sequence, appended to each entry's text tokens. "multiply" scales the
    tokens by ``strength``; "attn_bias" keeps them and adds log(strength) to the attention the other tokens
    pay them, through the entry's "attention_mask" (written also when a mask is already there)."""
    if strength_type not in ("multiply", "attn_bias"):
        raise ValueError(f"strength_type must be 'multiply' or 'attn_bias', got {strength_type!r}")
    cond = tokens.flatten(0, 1).unsqueeze(0)
    if strength_type == "multiply":
        cond = cond * strength
    bias = float(torch.log(torch.tensor(strength if strength_type == "attn_bias" else 1.0)))
    out = []
    for txt, opts in conditioning:
        opts = dict(opts)
        if "attention_mask" in opts or (strength_type == "attn_bias" and strength != 1.0):
            opts["attention_mask"] = _grown_mask(opts, txt, cond.shape[1], bias)
            opts["attention_mask_img_shape"] = opts.get("attention_mask_img_shape", (1, 1))
        extra = cond.to(txt.device, txt.dtype).expand(txt.shape[0], -1, -1)
        out.append([torch.cat([txt, extra], dim=1), opts])
    return out
