"""PhotoMaker's ID encoder (Li et al. 2023, "PhotoMaker: Customizing Realistic Human Photos via Stacked ID
Embedding"; TencentARC's ``photomaker-v1.bin``, its ``id_encoder`` part): a CLIP ViT-L/14 image tower with two
projections of the pooled class token (``visual_projection`` 1024->768, ``visual_projection_2`` 1024->1280),
whose concatenation (2048, SDXL's context width) is fused into the prompt embedding of the class word
("man" in "a photo of a man photomaker") by ``fuse_module``:

    h = mlp1([prompt, id]) + prompt;  h = mlp2(h) (residual);  out = layer_norm(h)

with ``mlp = fc2(gelu(fc1(layernorm(x))))``. Keys: the CLIP vision keys of ``clip_vision``,
``visual_projection_2.weight``, ``fuse_module.{mlp1,mlp2}.{layernorm,fc1,fc2}.*``, ``fuse_module.layer_norm.*``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip_vision import ClipVisionModel
from .loading import build_clip_vision


class _MLP(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, hidden: int, *, residual: bool) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(dim_in)
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, dim_out)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(F.gelu(self.fc1(self.layernorm(x))))
        return x + h if self.residual else h  # type: ignore[no-any-return]


class FuseModule(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp1 = _MLP(2 * dim, dim, dim, residual=False)
        self.mlp2 = _MLP(dim, dim, dim, residual=True)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, prompt: Tensor, identity: Tensor) -> Tensor:
        h = self.mlp1(torch.cat([prompt, identity], dim=-1)) + prompt
        return self.layer_norm(self.mlp2(h))  # type: ignore[no-any-return]


class PhotoMakerIDEncoder(nn.Module):
    """The vision tower's modules at the top level (their keys are the file's), plus the second projection
    and the fuse module."""

    def __init__(self, vision: ClipVisionModel, second_dim: int, fuse_dim: int) -> None:
        super().__init__()
        self.config = vision.config
        self.tower = [
            vision
        ]  # a list: not a submodule, so the keys stay vision_model.* / visual_projection.*
        self.vision_model = vision.vision_model
        self.visual_projection = vision.visual_projection
        self.visual_projection_2 = nn.Linear(vision.config.hidden_size, second_dim, bias=False)
        self.fuse_module = FuseModule(fuse_dim)

    def id_embeds(self, pixels: Tensor) -> Tensor:
        """Normalised pixels (N, 3, S, S) -> (N, 768 + 1280) identity embeddings."""
        pooled = self.tower[0](pixels).pooled
        return torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)

    def forward(self, pixels: Tensor, prompt_embeds: Tensor, positions: Sequence[int]) -> Tensor:
        """``prompt_embeds`` (B, T, D) with the token at each of ``positions`` replaced by its fusion with the
        first image's identity embedding (ComfyUI fuses one image, at one position)."""
        identity = self.id_embeds(pixels[:1].to(self.visual_projection_2.weight.dtype))[0]
        out = prompt_embeds.clone()
        for pos in positions:
            out[:, pos] = self.fuse_module(out[:, pos], identity.to(out.dtype).expand(out.shape[0], -1))
        return out


def build_photomaker(sd: Mapping[str, Tensor]) -> PhotoMakerIDEncoder:
    """The ID encoder from its state dict (an ``id_encoder.`` prefix is stripped); ValueError otherwise."""
    if any(k.startswith("id_encoder.") for k in sd):
        sd = {k[len("id_encoder.") :]: v for k, v in sd.items() if k.startswith("id_encoder.")}
    for key in ("visual_projection_2.weight", "fuse_module.layer_norm.weight", "visual_projection.weight"):
        if key not in sd:
            raise ValueError(
                f"not a PhotoMaker ID encoder: key {key!r} is missing (keys start: {sorted(sd)[:4]})"
            )
    vision_keys = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    vision = build_clip_vision({k: v.float() for k, v in vision_keys.items()})
    model = PhotoMakerIDEncoder(
        vision,
        int(sd["visual_projection_2.weight"].shape[0]),
        int(sd["fuse_module.layer_norm.weight"].shape[0]),
    )
    rest: dict[str, Any] = {
        k: v.float() for k, v in sd.items() if k.startswith(("visual_projection_2.", "fuse_module."))
    }
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [k for k in missing if k.startswith(("visual_projection_2.", "fuse_module."))]
    if missing or unexpected:
        raise ValueError(
            f"PhotoMaker ID encoder keys do not match: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return model.eval()
