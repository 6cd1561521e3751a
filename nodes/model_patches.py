"""UNet and model patches (ComfyUI's FreeU, FreeU_V2, the attention multipliers, DifferentialDiffusion,
PatchModelAddDownscale, HyperTile): each returns a clone of its MODEL / CLIP carrying a UNet patch or weight
patches, so the input value is unchanged. The formulas are ComfyUI's comfy_extras ones,
written anew here.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from engine import api

from ._image_ops import common_upscale

UNET = "model_patches/unet"
ATTENTION = "_for_testing/attention_experiments"
log = logging.getLogger(__name__)

# ---- FreeU ------------------------------------------------------------------------------------------


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """x with the centred (2t x 2t) low-frequency window of its spatial spectrum scaled by `scale`."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    _, _, h, w = spectrum.shape
    mask = torch.ones(spectrum.shape, device=x.device)
    cy, cx = h // 2, w // 2
    mask[..., cy - threshold : cy + threshold, cx - threshold : cx + threshold] = scale
    out = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x.dtype)


def _freeu_scales(model: Any, b1: float, b2: float, s1: float, s2: float) -> dict[int, tuple[float, float]]:
    """Backbone / skip factors by the channel count of the output blocks they apply to (4x and 2x the
    model's base channels: the two deepest decoder stages of SD1/SD2/SDXL)."""
    channels = int(model.model.model_config.unet_config["model_channels"])
    return {channels * 4: (b1, s1), channels * 2: (b2, s2)}


def _freeu_patch(scales: dict[int, tuple[float, float]], version: int) -> Any:
    def output_block_patch(h: torch.Tensor, hsp: torch.Tensor, transformer_options: Any):
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, hsp
        half = h.shape[1] // 2
        factor: Any = scale[0]
        if version == 2:
            # FreeU v2: the backbone factor grows with the (per item min-max normalised) channel mean.
            mean = h.mean(1, keepdim=True)
            flat = mean.reshape(mean.shape[0], -1)
            lo = flat.min(dim=-1).values.reshape(-1, 1, 1, 1)
            hi = flat.max(dim=-1).values.reshape(-1, 1, 1, 1)
            factor = (scale[0] - 1) * ((mean - lo) / (hi - lo)) + 1
        h = h.clone()
        h[:, :half] = h[:, :half] * factor
        return h, fourier_filter(hsp, threshold=1, scale=scale[1])

    return output_block_patch


def _freeu_inputs(b1: float, b2: float) -> list[api.Input]:
    return [
        api.Input("model", api.MODEL),
        api.Float("b1", b1, min=0.0, max=10.0, step=0.01),
        api.Float("b2", b2, min=0.0, max=10.0, step=0.01),
        api.Float("s1", 0.9, min=0.0, max=10.0, step=0.01),
        api.Float("s2", 0.2, min=0.0, max=10.0, step=0.01),
    ]


@api.node("FreeU", category=UNET, display_name="FreeU", inputs=_freeu_inputs(1.1, 1.2), outputs=[api.MODEL])
def freeu(model: Any, b1: float, b2: float, s1: float, s2: float):
    """Si et al. 2024 (FreeU): in the decoder's two deepest stages, the first half of the backbone channels
    times b, the skip connection's lowest frequencies times s."""
    m = model.clone()
    m.set_model_output_block_patch(_freeu_patch(_freeu_scales(model, b1, b2, s1, s2), 1))
    return (m,)


@api.node(
    "FreeU_V2", category=UNET, display_name="FreeU_V2", inputs=_freeu_inputs(1.3, 1.4), outputs=[api.MODEL]
)
def freeu_v2(model: Any, b1: float, b2: float, s1: float, s2: float):
    """FreeU with the structure-dependent backbone factor of the authors' v2."""
    m = model.clone()
    m.set_model_output_block_patch(_freeu_patch(_freeu_scales(model, b1, b2, s1, s2), 2))
    return (m,)


# ---- attention multipliers --------------------------------------------------------------------------


class ScaleOnly:
    """A weight patch that adds nothing: with strength_patch 0 and strength_model f the weight becomes
    f * W (ComfyUI's ``(None,)`` patch)."""

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(weight)


def _scale_weights(value: Any, factors: dict[str, float]) -> Any:
    """A clone of a MODEL / CLIP whose weights ending in each suffix are multiplied by its factor."""
    m = value.clone()
    keys = sorted(m.patcher.patch_keys())
    for suffix, factor in factors.items():
        chosen = {
            k: ScaleOnly() for k in keys if k.endswith(suffix + ".weight") or k.endswith(suffix + ".bias")
        }
        if chosen:
            m.patcher.add_patches(chosen, 0.0, factor)
    return m


def _multiplier_inputs(first: api.Input) -> list[api.Input]:
    return [first, *(api.Float(n, 1.0, min=0.0, max=10.0, step=0.01) for n in ("q", "k", "v", "out"))]


def _unet_factors(attn: str, q: float, k: float, v: float, out: float) -> dict[str, float]:
    return {f"{attn}.to_q": q, f"{attn}.to_k": k, f"{attn}.to_v": v, f"{attn}.to_out.0": out}


def _unet_multiply(node_type: str, attn: str, what: str) -> api.NodeDefinition:
    def multiply(model: Any, q: float, k: float, v: float, out: float):
        return (_scale_weights(model, _unet_factors(attn, q, k, v, out)),)

    multiply.__doc__ = f"The UNet's {what} ({attn}) query / key / value / output weights and biases scaled."
    declare = api.node(
        node_type,
        category=ATTENTION,
        experimental=True,
        inputs=_multiplier_inputs(api.Input("model", api.MODEL)),
        outputs=[api.MODEL],
    )
    return declare(multiply)


unet_self_attention_multiply = _unet_multiply("UNetSelfAttentionMultiply", "attn1", "self-attention")
unet_cross_attention_multiply = _unet_multiply("UNetCrossAttentionMultiply", "attn2", "cross-attention")


@api.node(
    "CLIPAttentionMultiply",
    category=ATTENTION,
    experimental=True,
    inputs=_multiplier_inputs(api.Input("clip", api.CLIP)),
    outputs=[api.CLIP],
)
def clip_attention_multiply(clip: Any, q: float, k: float, v: float, out: float):
    """The text encoders' self-attention projections scaled (every tower)."""
    factors = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v, "self_attn.out_proj": out}
    return (_scale_weights(clip, factors),)


# ---- Differential Diffusion ---------------------------------------------------------------------------


def differential_mask(
    sigma: torch.Tensor, mask: torch.Tensor, extra_options: dict[str, Any], strength: float
) -> torch.Tensor:
    """Levin & Fried 2024: a pixel is repainted while its mask value is at least the fraction of the run's
    timestep range still ahead (1 at the start, 0 at the end), blended with the soft mask below strength 1."""
    model = extra_options["model"]
    ms = getattr(model, "inner_model", model).model_sampling
    sigmas = extra_options.get("sigmas")
    sigma_to = ms.sigma_min
    if sigmas is None:
        sigma_from = ms.sigma_max
    else:
        sigma_from = sigmas[0]
        if sigmas[-1] > sigma_to:
            sigma_to = sigmas[-1]
    ts_from, ts_to = (ms.timestep(torch.as_tensor(s)) for s in (sigma_from, sigma_to))
    threshold = (ms.timestep(sigma.reshape(-1)[0]) - ts_to) / (ts_from - ts_to)
    binary = (mask >= threshold.to(mask.device)).to(mask.dtype)
    if strength and strength < 1:
        return strength * binary + (1 - strength) * mask
    return binary


@api.node(
    "DifferentialDiffusion",
    category="_for_testing",
    experimental=True,
    display_name="Differential Diffusion",
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("strength", 1.0, min=0.0, max=1.0, step=0.01, optional=True),
    ],
    outputs=[api.MODEL],
)
def differential_diffusion(model: Any, strength: float = 1.0):
    m = model.clone()
    m.set_model_denoise_mask_function(
        lambda sigma, mask, extra_options: differential_mask(sigma, mask, extra_options, strength)
    )
    return (m,)


# ---- Kohya Deep Shrink --------------------------------------------------------------------------------

_RESIZE_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]


def deep_shrink_patches(
    block_number: int, factor: float, sigma_start: float, sigma_end: float, down: str, up: str
) -> tuple[Any, Any]:
    """(input-block patch, output-block patch): input block `block_number`'s output shrunk by `factor`
    while the step's sigma is within [sigma_end, sigma_start]; decoder features brought back to their
    skip connection's size."""

    def input_block_patch(h: torch.Tensor, transformer_options: dict[str, Any]) -> torch.Tensor:
        if transformer_options["block"][1] != block_number:
            return h
        sigma = float(transformer_options["sigmas"][0])
        if sigma_end <= sigma <= sigma_start:
            width, height = round(h.shape[-1] * (1.0 / factor)), round(h.shape[-2] * (1.0 / factor))
            h = common_upscale(h, width, height, down, "disabled")
        return h

    def output_block_patch(h: torch.Tensor, hsp: torch.Tensor, transformer_options: Any):
        if h.shape[2] != hsp.shape[2]:
            h = common_upscale(h, hsp.shape[-1], hsp.shape[-2], up, "disabled")
        return h, hsp

    return input_block_patch, output_block_patch


@api.node(
    "PatchModelAddDownscale",
    category=UNET,
    display_name="PatchModelAddDownscale (Kohya Deep Shrink)",
    inputs=[
        api.Input("model", api.MODEL),
        api.Int("block_number", 3, min=1, max=32, step=1),
        api.Float("downscale_factor", 2.0, min=0.1, max=9.0, step=0.001),
        api.Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
        api.Float("end_percent", 0.35, min=0.0, max=1.0, step=0.001),
        api.Boolean("downscale_after_skip", True),
        api.Combo("downscale_method", _RESIZE_METHODS),
        api.Combo("upscale_method", _RESIZE_METHODS),
    ],
    outputs=[api.MODEL],
)
def patch_model_add_downscale(
    model: Any,
    block_number: int,
    downscale_factor: float,
    start_percent: float,
    end_percent: float,
    downscale_after_skip: bool,
    downscale_method: str,
    upscale_method: str,
):
    """Kohya's Deep Shrink: the UNet works at a smaller size in its deeper blocks for the early steps."""
    ms = model.get_model_object("model_sampling")
    sigma_start, sigma_end = (
        float(ms.percent_to_sigma(start_percent)),
        float(ms.percent_to_sigma(end_percent)),
    )
    down, up = deep_shrink_patches(
        block_number, downscale_factor, sigma_start, sigma_end, downscale_method, upscale_method
    )
    m = model.clone()
    if downscale_after_skip:
        m.set_model_input_block_patch_after_skip(down)
    else:
        m.set_model_input_block_patch(down)
    m.set_model_output_block_patch(up)
    return (m,)


# ---- HyperTile ------------------------------------------------------------------------------------------


def random_divisor(value: int, min_value: int, max_options: int = 1) -> int:
    """value // d for one of the `max_options` smallest divisors d >= min_value of value, drawn from the
    global torch generator as ComfyUI draws it (its randint's exclusive bound never picks the last)."""
    min_value = min(min_value, value)
    counts = [value // d for d in range(min_value, value + 1) if value % d == 0][:max_options]
    index = int(torch.randint(low=0, high=len(counts) - 1, size=(1,)).item()) if len(counts) > 1 else 0
    return counts[index]


def hypertile_patches(tile_size: int, swap_size: int, max_depth: int, scale_depth: bool) -> tuple[Any, Any]:
    """(attn1 patch, attn1 output patch): at the UNet's first max_depth + 1 levels, self-attention queries
    regrouped into tiles of about tile_size / 8 latent pixels, and the output put back in place."""
    latent_tile = max(32, tile_size) // 8
    state: dict[str, Any] = {}

    def tile_in(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]):
        shape = extra["original_shape"]
        sizes = [(shape[-2] / 2**i) * (shape[-1] / 2**i) for i in range(max_depth + 1)]
        tokens = q.shape[-2]
        if tokens not in sizes:
            return q, k, v
        aspect = shape[-1] / shape[-2]
        h, w = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
        factor = 2 ** sizes.index(tokens) if scale_depth else 1
        nh = random_divisor(h, latent_tile * factor, swap_size)
        nw = random_divisor(w, latent_tile * factor, swap_size)
        if nh * nw > 1:
            b, _, c = q.shape
            q = q.reshape(b, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5)
            q = q.reshape(b * nh * nw, (h // nh) * (w // nw), c)
            # Keys and values stay whole; ComfyUI's attention then reads them as nh·nw consecutive chunks
            # of tokens per query tile (it views them with the queries' batch), and so does this.
            k = k.reshape(b * nh * nw, -1, k.shape[-1])
            v = v.reshape(b * nh * nw, -1, v.shape[-1])
            state["tiles"] = (nh, nw, h, w)
        return q, k, v

    def tile_out(out: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        tiles = state.pop("tiles", None)
        if tiles is None:
            return out
        nh, nw, h, w = tiles
        c = out.shape[-1]
        out = out.reshape(-1, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(-1, h * w, c)

    return tile_in, tile_out


@api.node(
    "HyperTile",
    category=UNET,
    inputs=[
        api.Input("model", api.MODEL),
        api.Input("tile_size", api.INT, default=256, min=1, max=2048),
        api.Input("swap_size", api.INT, default=2, min=1, max=128),
        api.Input("max_depth", api.INT, default=0, min=0, max=10),
        api.Boolean("scale_depth", False),
    ],
    outputs=[api.MODEL],
)
def hypertile(model: Any, tile_size: int, swap_size: int, max_depth: int, scale_depth: bool):
    """HyperTile (tfernd): tiled self-attention in the UNet's high-resolution levels, for speed."""
    tile_in, tile_out = hypertile_patches(tile_size, swap_size, max_depth, scale_depth)
    m = model.clone()
    m.set_model_attn1_patch(tile_in)
    m.set_model_attn1_output_patch(tile_out)
    return (m,)


# ---- TorchCompileModel -----------------------------------------------------------------------------


@api.node(
    "TorchCompileModel",
    category="_for_testing",
    experimental=True,
    inputs=[api.Input("model", api.MODEL), api.Combo("backend", ["inductor", "cudagraphs"])],
    outputs=[api.MODEL],
)
def torch_compile_model(model: Any, backend: str):
    """A clone of the model whose diffusion network runs through torch.compile (engine.diffusion.compiling:
    compiled once per network and backend, reused across seeds and prompts, weight patches still applied;
    "cudagraphs" off CUDA compiles with inductor)."""
    from engine.api.model_speed import with_compile

    return (with_compile(model, backend),)


NODES = [
    freeu,
    freeu_v2,
    unet_self_attention_multiply,
    unet_cross_attention_multiply,
    clip_attention_multiply,
    differential_diffusion,
    patch_model_add_downscale,
    hypertile,
    torch_compile_model,
]
