"""CLIP / SigLIP vision towers (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"; Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"): a ViT that turns a
normalised image into patch tokens.

Parameter names are the keys of the Hugging Face ``CLIPVisionModelWithProjection`` / ``SiglipVisionModel``
files that ComfyUI's ``models/clip_vision`` holds: ``vision_model.embeddings.{class_embedding,
patch_embedding,position_embedding}``, ``vision_model.pre_layrnorm`` (sic, CLIP only),
``vision_model.encoder.layers.N.{layer_norm1,self_attn.{q,k,v,out}_proj,layer_norm2,mlp.fc1,mlp.fc2}``,
``vision_model.post_layernorm``, ``visual_projection`` (CLIP) and LLaVA's ``multi_modal_projector.linear_{1,2}``.

The two kinds differ as ComfyUI runs them: CLIP prepends a class token, normalises before the encoder, and
pools the class token through ``post_layernorm`` and ``visual_projection`` into ``image_embeds``; SigLIP has
a biased patch convolution, no class token and no pre-norm, applies ``post_layernorm`` to every token and
returns those tokens as its ``image_embeds`` (its attention-pooling head, ``vision_model.head.*``, is unused).
All layer norms use eps 1e-5, as ComfyUI's do (transformers' SigLIP uses 1e-6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.attention import attention as fast_attention

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
LAYER_NORM_EPS = 1e-5
# LLaVA's projector maps the vision tokens to the 4096-wide Llama-3 embedding (ComfyUI's LlavaProjector).
LLAVA_WIDTH = 4096


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    # OpenAI CLIP's sigmoid approximation of GELU.
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Any] = {"quick_gelu": _quick_gelu, "gelu": F.gelu, "gelu_pytorch_tanh": _gelu_tanh}


@dataclass(frozen=True)
class VisionConfig:
    """One vision tower. ``kind``: "clip" (class token, pre-norm, projection) or "siglip".
    ``projection_dim``: ``visual_projection`` output size (None: no projection, image_embeds = pooled).
    ``llava_projector``: the tower carries LLaVA's ``multi_modal_projector`` (ComfyUI's mm_projected)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    activation: str = "gelu"
    kind: str = "clip"
    projection_dim: int | None = None
    llava_projector: bool = False
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def num_positions(self) -> int:
        patches = (self.image_size // self.patch_size) ** 2
        return patches + (1 if self.kind == "clip" else 0)

    # ---- presets (ComfyUI's clip_vision_*.json) -----------------------------------------------------
    @classmethod
    def vit_l(cls, image_size: int = 224) -> VisionConfig:
        return cls(1024, 24, 16, 4096, 14, image_size, "quick_gelu", projection_dim=768)

    @classmethod
    def vit_h(cls) -> VisionConfig:
        return cls(1280, 32, 16, 5120, 14, 224, "gelu", projection_dim=1024)

    @classmethod
    def vit_bigg(cls) -> VisionConfig:
        return cls(1664, 48, 16, 8192, 14, 224, "gelu", projection_dim=1280)

    @classmethod
    def siglip(cls, image_size: int = 384) -> VisionConfig:
        patch = 16 if image_size == 512 else 14
        return cls(
            1152,
            27,
            16,
            4304,
            patch,
            image_size,
            "gelu_pytorch_tanh",
            "siglip",
            mean=SIGLIP_MEAN,
            std=SIGLIP_STD,
        )

    @classmethod
    def tiny(cls, *, kind: str = "clip", activation: str = "gelu") -> VisionConfig:
        """A test tower: 32 wide, 2 layers, 28-pixel images in 14-pixel patches; one head, what the loaders
        infer for this width (``default_heads``)."""
        if kind == "siglip":
            return cls(32, 2, 1, 64, 14, 28, activation, "siglip", mean=SIGLIP_MEAN, std=SIGLIP_STD)
        return cls(32, 2, 1, 64, 14, 28, activation, projection_dim=16)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, fk: dict[str, Any]) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width, **fk)
        self.k_proj = nn.Linear(width, width, **fk)
        self.v_proj = nn.Linear(width, width, **fk)
        self.out_proj = nn.Linear(width, width, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (
            p(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = fast_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))  # type: ignore[no-any-return]


class _MLP(nn.Module):
    def __init__(self, width: int, inner: int, activation: str, fk: dict[str, Any]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, inner, **fk)
        self.fc2 = nn.Linear(inner, width, **fk)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # type: ignore[no-any-return]


class _Layer(nn.Module):
    def __init__(self, cfg: VisionConfig, fk: dict[str, Any]) -> None:
        super().__init__()
        w = cfg.hidden_size
        self.layer_norm1 = nn.LayerNorm(w, eps=LAYER_NORM_EPS, **fk)
        self.self_attn = _Attention(w, cfg.num_heads, fk)
        self.layer_norm2 = nn.LayerNorm(w, eps=LAYER_NORM_EPS, **fk)
        self.mlp = _MLP(w, cfg.intermediate_size, cfg.activation, fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: VisionConfig, fk: dict[str, Any]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg, fk) for _ in range(cfg.num_layers))


class _Embeddings(nn.Module):
    def __init__(self, cfg: VisionConfig, fk: dict[str, Any]) -> None:
        super().__init__()
        clip = cfg.kind == "clip"
        if clip:
            self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size, **fk))
        self.patch_embedding = nn.Conv2d(
            3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size, bias=not clip, **fk
        )
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size, **fk)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (B, patches, width)
        cls = getattr(self, "class_embedding", None)
        if cls is not None:
            x = torch.cat([cls.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        return x + self.position_embedding.weight.to(x.dtype)


class _Transformer(nn.Module):
    """``vision_model``: embeddings, (pre-norm), encoder, post-norm."""

    def __init__(self, cfg: VisionConfig, fk: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg, fk)
        if cfg.kind == "clip":
            self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=LAYER_NORM_EPS, **fk)
        self.encoder = _Encoder(cfg, fk)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=LAYER_NORM_EPS, **fk)


class LlavaProjector(nn.Module):
    """``multi_modal_projector``: two linears with GELU over the patch tokens (class token dropped)."""

    def __init__(self, width: int, out: int, fk: dict[str, Any]) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(width, out, **fk)
        self.linear_2 = nn.Linear(out, out, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x[:, 1:])))  # type: ignore[no-any-return]


@dataclass
class VisionOutputs:
    """What one forward pass gives (ComfyUI's clip_vision.Output fields, see engine.handles.clip_vision).
    ``hidden_states``: (B, layers, tokens, width), every layer's output, when asked for."""

    last_hidden_state: torch.Tensor
    penultimate_hidden_states: torch.Tensor
    image_embeds: torch.Tensor
    mm_projected: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    pooled: torch.Tensor | None = None  # before visual_projection (CLIP: the normalised class token)


class ClipVisionModel(nn.Module):
    def __init__(self, config: VisionConfig, *, dtype: torch.dtype | None = None, device: Any = None) -> None:
        super().__init__()
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        self.config = config
        self.vision_model = _Transformer(config, fk)
        if config.projection_dim is not None:
            self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False, **fk)
        if config.llava_projector:
            self.multi_modal_projector = LlavaProjector(config.hidden_size, LLAVA_WIDTH, fk)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_model.post_layernorm.weight.dtype

    def forward(self, pixels: torch.Tensor, *, all_hidden_states: bool = False) -> VisionOutputs:
        """Normalised pixels (B, 3, S, S) -> outputs in the model's dtype."""
        vm = self.vision_model
        x = vm.embeddings(pixels.to(self.dtype))
        pre = getattr(vm, "pre_layrnorm", None)
        if pre is not None:
            x = pre(x)
        layers = vm.encoder.layers
        penultimate_index = len(layers) - 2  # ComfyUI asks for layer -2 (the 0-based index n - 2)
        penultimate = x
        states = []
        for i, layer in enumerate(layers):
            x = layer(x)
            if i == penultimate_index:
                penultimate = x
            if all_hidden_states:
                states.append(x)
        if self.config.kind == "siglip":
            x = vm.post_layernorm(x)
            pooled = x
        else:
            pooled = vm.post_layernorm(x[:, 0])
        proj = getattr(self, "visual_projection", None)
        mmp = getattr(self, "multi_modal_projector", None)
        return VisionOutputs(
            last_hidden_state=x,
            penultimate_hidden_states=penultimate,
            image_embeds=proj(pooled) if proj is not None else pooled,
            mm_projected=mmp(penultimate) if mmp is not None else None,
            hidden_states=torch.stack(states, dim=1) if all_hidden_states else None,
            pooled=pooled,
        )


def default_heads(width: int) -> int:
    """Head count of a tower this wide: 16 for every tower ComfyUI loads (ViT-L/H/bigG, SigLIP), 12 for
    OpenAI's ViT-B; 64-wide heads otherwise (tiny and unusual towers; shapes do not show the count)."""
    known = {1024: 16, 1280: 16, 1664: 16, 1152: 16, 768: 12}
    if width in known:
        return known[width]
    heads = max(1, width // 64)
    return heads if width % heads == 0 else 1


def image_size_for(positions: int, patch: int, *, class_token: bool) -> int:
    """Image side from the position table: (side / patch)^2 patches (+1 class token). SigLIP-384 is the
    exception: 384-pixel images in 14-pixel patches, the last 6 pixels left out by the strided convolution."""
    patches = positions - (1 if class_token else 0)
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{positions} position embeddings do not form a square grid of patches")
    return 384 if (side, patch, class_token) == (27, 14, False) else side * patch
