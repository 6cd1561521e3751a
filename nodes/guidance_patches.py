"""Guidance patches (ComfyUI's RescaleCFG, PerturbedAttentionGuidance, Epsilon Scaling, CFGZeroStar, CFGNorm,
TCFG, Mahiro, FreSca, PerpNeg, PerpNegGuider): each returns a clone of the MODEL with a guidance hook
(cfg function, pre-CFG or post-CFG function), in ComfyUI's argument dicts, so the input model is unchanged.

The formulas are those of ComfyUI's comfy_extras modules (written anew here); each hook's docstring says
what it computes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from engine import api
from engine.api import sampling

GUIDANCE = "advanced/guidance"
TESTING = "_for_testing"
# What an extra evaluation of the model keeps of its options: the UNet patches and the unet wrapper,
# not the guidance hooks (they are what calls it, and must not run again).
_MODEL_CALL_OPTIONS = ("transformer_options", "model_function_wrapper")


def model_call_view(handle: Any, options: dict[str, Any]) -> Any:
    """The MODEL as it is being sampled (same weights and patches) with `options`' UNet patches and none
    of its guidance hooks. A shallow copy, not a clone: a clone deep-copies the options, at every step."""
    view = copy.copy(handle)
    view.model_options = {k: v for k, v in options.items() if k in _MODEL_CALL_OPTIONS}
    return view


def evaluate_conditioning(
    model_obj: Any, cond: Any, x: torch.Tensor, sigma: torch.Tensor, options: dict[str, Any]
) -> torch.Tensor:
    """ComfyUI's calc_cond_batch for one conditioning: the x0 estimate of `cond` at `sigma` from the model
    a guidance hook gets as args["model"], with `options`' UNet patches and without its guidance hooks."""
    handle = model_call_view(model_obj.current_patcher, options)
    guider = sampling.Guider(handle, "basic", {"positive": cond})
    # No latent image: like ComfyUI's calc_cond_batch, the conditioning is evaluated as given.
    return guider.denoiser(x, latent_image=None, denoise_mask=None)(x, sigma)  # type: ignore[arg-type]


def _patched(model: Any, hook: str, fn: Any) -> tuple[Any]:
    m = model.clone()
    getattr(m, f"set_model_sampler_{hook}_function")(fn)
    return (m,)


# ---- RescaleCFG -------------------------------------------------------------------------------------


def rescale_cfg_function(multiplier: float) -> Any:
    """CFG on v-predictions whose result is rescaled to the conditional prediction's standard deviation
    (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16), blended
    with plain CFG by `multiplier`; in ComfyUI's cfg-function form (returns x - denoised)."""

    def fn(args: dict[str, Any]) -> torch.Tensor:
        cond, uncond, scale, x_orig = args["cond"], args["uncond"], args["cond_scale"], args["input"]
        sigma = args["sigma"].reshape(args["sigma"].shape[:1] + (1,) * (cond.ndim - 1))
        # The VE-form input in VP form, and both sides' v-predictions.
        x = x_orig / (sigma * sigma + 1.0)
        root = (sigma * sigma + 1.0) ** 0.5
        v_cond = (x - (x_orig - cond)) * root / sigma
        v_uncond = (x - (x_orig - uncond)) * root / sigma
        v_cfg = v_uncond + scale * (v_cond - v_uncond)
        std_cond = torch.std(v_cond, dim=(1, 2, 3), keepdim=True)
        std_cfg = torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
        v_final = multiplier * (v_cfg * (std_cond / std_cfg)) + (1.0 - multiplier) * v_cfg
        return x_orig - (x - v_final * sigma / root)

    return fn


@api.node(
    "RescaleCFG",
    category="advanced/model",
    display_name="RescaleCFG",
    inputs=[api.Input("model", api.MODEL), api.Float("multiplier", 0.7, min=0.0, max=1.0, step=0.01)],
    outputs=[api.MODEL],
)
def rescale_cfg(model: Any, multiplier: float):
    return _patched(model, "cfg", rescale_cfg_function(multiplier))


# ---- perturbed-attention guidance --------------------------------------------------------------------


def _identity_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: Any, mask: Any = None
):
    """Self-attention whose attention map is the identity: each token keeps its own value."""
    return v


def _with_attn1_replace(options: dict[str, Any], patch: Any, block: str, number: int) -> dict[str, Any]:
    out = dict(options)
    to = dict(out.get("transformer_options") or {})
    replace = dict(to.get("patches_replace") or {})
    table = dict(replace.get("attn1") or {})
    table[(block, number)] = patch
    replace["attn1"] = table
    to["patches_replace"] = replace
    out["transformer_options"] = to
    return out


@api.node(
    "PerturbedAttentionGuidance",
    category="model_patches/unet",
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("scale", 3.0, min=0.0, max=100.0, step=0.01, round=0.01),
    ],
    outputs=[api.MODEL],
)
def perturbed_attention_guidance(model: Any, scale: float):
    """Ahn et al. 2024: after CFG, add scale * (cond - cond with the middle block's self-attention map
    replaced by the identity)."""

    def post_cfg(args: dict[str, Any]) -> torch.Tensor:
        denoised = args["denoised"]
        if scale == 0:
            return denoised
        options = _with_attn1_replace(dict(args["model_options"]), _identity_attention, "middle", 0)
        perturbed = evaluate_conditioning(args["model"], args["cond"], args["input"], args["sigma"], options)
        return denoised + (args["cond_denoised"] - perturbed) * scale

    return _patched(model, "post_cfg", post_cfg)


# ---- post-CFG rescalings -------------------------------------------------------------------------


@api.node(
    "Epsilon Scaling",
    category="model_patches/unet",
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("scaling_factor", 1.005, min=0.5, max=1.5, step=0.001, display="number"),
    ],
    outputs=[api.MODEL],
)
def epsilon_scaling(model: Any, scaling_factor: float):
    """Ning et al. 2023 (exposure bias), uniform schedule: the guided noise estimate divided by the factor."""
    factor = scaling_factor or 1e-9

    def post_cfg(args: dict[str, Any]) -> torch.Tensor:
        x = args["input"]
        return x - (x - args["denoised"]) / factor

    return _patched(model, "post_cfg", post_cfg)


def zero_star_alpha(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s per-item projection scale <p, n> / (|n|^2 + 1e-8), shaped to broadcast."""
    p = positive.reshape(positive.shape[0], -1)
    n = negative.reshape(negative.shape[0], -1)
    alpha = (p * n).sum(dim=1, keepdim=True) / ((n**2).sum(dim=1, keepdim=True) + 1e-8)
    return alpha.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


@api.node(
    "CFGZeroStar",
    category=GUIDANCE,
    inputs=[api.Input("model", api.MODEL)],
    outputs=[api.Output(api.MODEL, "patched_model")],
)
def cfg_zero_star(model: Any):
    """Fan et al. 2025 (CFG-Zero*): the unconditional side rescaled by the projection of the conditional
    noise estimate on the unconditional one, as ComfyUI applies it to the guided x0."""

    def post_cfg(args: dict[str, Any]) -> torch.Tensor:
        x, cond, uncond, scale = (
            args["input"],
            args["cond_denoised"],
            args["uncond_denoised"],
            args["cond_scale"],
        )
        alpha = zero_star_alpha(x - cond, x - uncond)
        return args["denoised"] + uncond * (alpha - 1.0) + scale * uncond * (1.0 - alpha)

    return _patched(model, "post_cfg", post_cfg)


@api.node(
    "CFGNorm",
    category=GUIDANCE,
    experimental=True,
    inputs=[api.Input("model", api.MODEL), api.Float("strength", 1.0, min=0.0, max=100.0, step=0.01)],
    outputs=[api.Output(api.MODEL, "patched_model")],
)
def cfg_norm(model: Any, strength: float):
    """The guided x0 scaled per pixel so its channel norm does not exceed the conditional one's, times
    strength."""

    def post_cfg(args: dict[str, Any]) -> torch.Tensor:
        cond, den = args["cond_denoised"], args["denoised"]
        ratio = torch.norm(cond, dim=1, keepdim=True) / (torch.norm(den, dim=1, keepdim=True) + 1e-8)
        return den * ratio.clamp(0.0, 1.0) * strength

    return _patched(model, "post_cfg", post_cfg)


def mahiro_function(args: dict[str, Any]) -> torch.Tensor:
    """Mahiro: blend of CFG and the scaled conditional x0, weighted by how similar (cosine over channels of
    sign-preserving square roots, averaged) the scaled unconditional x0 is to their mean."""
    scale = args["cond_scale"]
    leap, u_leap, cfg = args["cond_denoised"] * scale, args["uncond_denoised"] * scale, args["denoised"]
    merge = (leap + cfg) / 2
    root_u = u_leap.abs().sqrt() * u_leap.sign()
    root_m = merge.abs().sqrt() * merge.sign()
    weight = 2 * (F.cosine_similarity(root_u, root_m).mean() + 1)
    return (weight * cfg + (4 - weight) * leap) / 4


@api.node(
    "Mahiro",
    category=TESTING,
    experimental=True,
    display_name="Mahiro is so cute that she deserves a better guidance function!! (。・ω・。)",
    inputs=[api.Input("model", api.MODEL)],
    outputs=[api.Output(api.MODEL, "patched_model")],
)
def mahiro(model: Any):
    return _patched(model, "post_cfg", mahiro_function)


# ---- pre-CFG rewrites of the two predictions -----------------------------------------------------------


def tangential_damping(cond_score: torch.Tensor, uncond_score: torch.Tensor) -> torch.Tensor:
    """The unconditional score projected on the first right-singular vector of [uncond; cond] (per item)."""
    b = cond_score.shape[0]
    matrix = torch.cat((uncond_score.reshape(b, 1, -1).float(), cond_score.reshape(b, 1, -1).float()), dim=1)
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    v1 = vh[:, 0:1, :]
    flat = uncond_score.reshape(b, 1, -1).float()
    return ((flat @ v1.transpose(-2, -1)) * v1).reshape_as(uncond_score).to(uncond_score.dtype)


@api.node(
    "TCFG",
    category=GUIDANCE,
    display_name="Tangential Damping CFG",
    inputs=[api.Input("model", api.MODEL)],
    outputs=[api.Output(api.MODEL, "patched_model")],
)
def tcfg(model: Any):
    """Kwon et al. 2025 (TCFG): the unconditional noise estimate loses its components tangential to the
    subspace both estimates share, before CFG."""

    def pre_cfg(args: dict[str, Any]) -> list[torch.Tensor]:
        out = args["conds_out"]
        if len(out) <= 1 or None in args["conds"][:2]:
            return out
        x = args["input"]
        damped = tangential_damping(x - out[0], x - out[1])
        return [out[0], x - damped, *out[2:]]

    return _patched(model, "pre_cfg", pre_cfg)


def frequency_scale(x: torch.Tensor, scale_low: float, scale_high: float, cutoff: int) -> torch.Tensor:
    """x with its centred spatial spectrum scaled: scale_low inside the central (2c x 2c) window (c capped at
    half each side), scale_high elsewhere."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full(spectrum.shape, float(scale_high), device=x.device)
    window = mask
    for dim in range(2, spectrum.ndim):
        centre = spectrum.shape[dim] // 2
        c = min(cutoff, centre)
        window = window.narrow(dim, centre - c, 2 * c)
    window.fill_(scale_low)
    out = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x.dtype)


@api.node(
    "FreSca",
    category=TESTING,
    experimental=True,
    display_name="FreSca",
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("scale_low", 1.0, min=0, max=10, step=0.01),
        api.Float("scale_high", 1.25, min=0, max=10, step=0.01),
        api.Int("freq_cutoff", 20, min=1, max=10000, step=1),
    ],
    outputs=[api.MODEL],
)
def fresca(model: Any, scale_low: float, scale_high: float, freq_cutoff: int):
    """Huang et al. 2025 (FreSca): the guidance direction cond - uncond scaled per frequency band."""

    def pre_cfg(args: dict[str, Any]) -> list[torch.Tensor]:
        out = args["conds_out"]
        if len(out) <= 1 or None in args["conds"][:2]:
            return out
        guidance = frequency_scale(out[0] - out[1], scale_low, scale_high, freq_cutoff)
        return [guidance + out[1], out[1], *out[2:]]

    return _patched(model, "pre_cfg", pre_cfg)


# ---- Perp-Neg -------------------------------------------------------------------------------------


def perp_neg(
    pos: torch.Tensor, neg: torch.Tensor, empty: torch.Tensor, neg_scale: float, cond_scale: float
) -> torch.Tensor:
    """Armandpour et al. 2023 (Perp-Neg) on x0 estimates: empty + cfg * (p - neg_scale * (n minus its
    projection on p)), with p, n the positive / negative estimates minus the empty prompt's."""
    p, n = pos - empty, neg - empty
    perpendicular = n - (torch.mul(n, p).sum() / torch.norm(p) ** 2) * p
    return empty + cond_scale * (p - perpendicular * neg_scale)


def _as_negative(conditioning: Any) -> list[list[Any]]:
    return [[c[0], {**c[1], "prompt_type": "negative"}] for c in conditioning]


@api.node(
    "PerpNeg",
    category=TESTING,
    experimental=True,
    deprecated=True,
    display_name="Perp-Neg (DEPRECATED by PerpNegGuider)",
    inputs=[
        api.Input("model", api.MODEL),
        api.Input("empty_conditioning", api.CONDITIONING),
        api.Float("neg_scale", 1.0, min=0.0, max=100.0, step=0.01),
    ],
    outputs=[api.MODEL],
)
def perp_neg_model(model: Any, empty_conditioning: Any, neg_scale: float):
    empty = _as_negative(empty_conditioning)

    def cfg_function(args: dict[str, Any]) -> torch.Tensor:
        x = args["input"]
        nocond = evaluate_conditioning(args["model"], empty, x, args["sigma"], dict(args["model_options"]))
        guided = perp_neg(
            args["cond_denoised"], args["uncond_denoised"], nocond, neg_scale, args["cond_scale"]
        )
        return x - guided

    return _patched(model, "cfg", cfg_function)


class PerpNegGuider:
    """A GUIDER evaluating positive, negative and empty conditionings and combining them with Perp-Neg,
    then the model's post-CFG functions (ComfyUI's Guider_PerpNeg, pre-CFG functions included)."""

    def __init__(self, model: Any, conds: dict[str, Any], cfg: float, neg_scale: float) -> None:
        self.model = model
        self.conds = conds
        self.cfg = cfg
        self.neg_scale = neg_scale

    def denoiser(
        self, like: torch.Tensor, *, latent_image: Any, denoise_mask: Any, sigmas: Any = None
    ) -> Any:
        options = self.model.model_options
        plain = model_call_view(self.model, options)
        names = ["positive", "negative", "empty_negative_prompt"]
        if not options.get("disable_cfg1_optimization", False) and math.isclose(self.neg_scale, 0.0):
            names[1] = ""
            if math.isclose(self.cfg, 1.0):
                names[2] = ""
        kw = {"latent_image": latent_image, "denoise_mask": denoise_mask, "sigmas": sigmas}
        sides = [
            sampling.Guider(plain, "basic", {"positive": self.conds[n]}).denoiser(like, **kw) if n else None
            for n in names
        ]
        conds = [self.conds[n] if n else None for n in names]

        def combine(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            out = [side(x, sigma) if side is not None else torch.zeros_like(x) for side in sides]
            base = {"cond_scale": self.cfg, "input": x, "sigma": sigma, "model": self.model.model}
            base["model_options"] = options
            for fn in options.get("sampler_pre_cfg_function", ()):
                out = fn({**base, "conds": conds, "conds_out": out, "timestep": sigma})
            pos, neg, empty = out
            result = perp_neg(pos, neg, empty, self.neg_scale, self.cfg)
            for fn in options.get("sampler_post_cfg_function", ()):
                args = {**base, "denoised": result, "cond": conds[0], "uncond": conds[1]}
                args |= {"uncond_denoised": neg, "cond_denoised": pos, "empty_cond": conds[2]}
                result = fn({**args, "empty_cond_denoised": empty})
            return result

        return _Denoiser(combine, self.model.model_sampling, options)


class _Denoiser:
    """D(x, sigma) with what the samplers read beside it: the model sampling and the model options."""

    def __init__(self, fn: Any, model_sampling: Any, model_options: dict[str, Any]) -> None:
        self.fn = fn
        self.model_sampling = model_sampling
        self.model_options = model_options

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.fn(x, sigma)


@api.node(
    "PerpNegGuider",
    category=TESTING,
    experimental=True,
    inputs=[
        api.Input("model", api.MODEL),
        api.Input("positive", api.CONDITIONING),
        api.Input("negative", api.CONDITIONING),
        api.Input("empty_conditioning", api.CONDITIONING),
        api.Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        api.Float("neg_scale", 1.0, min=0.0, max=100.0, step=0.01),
    ],
    outputs=[api.GUIDER],
)
def perp_neg_guider(
    model: Any, positive: Any, negative: Any, empty_conditioning: Any, cfg: float, neg_scale: float
):
    conds = {
        "positive": positive,
        "negative": negative,
        "empty_negative_prompt": _as_negative(empty_conditioning),
    }
    return (PerpNegGuider(model, conds, cfg, neg_scale),)


# ---- self-attention guidance ----------------------------------------------------------------------


def attention_with_scores(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over (B, tokens, heads·d) projections: (output, scores (B·heads, Tq, Tk))."""
    b, _, inner = q.shape
    d = inner // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, -1, heads, d).permute(0, 2, 1, 3).reshape(b * heads, -1, d)

    scores = (torch.einsum("bid,bjd->bij", split(q), split(k)) * d**-0.5).softmax(dim=-1)
    out = torch.einsum("bij,bjd->bid", scores.to(v.dtype), split(v))
    return out.reshape(b, heads, -1, d).permute(0, 2, 1, 3).reshape(b, -1, heads * d), scores


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel, reflect-padded to keep the size."""
    half = (kernel_size - 1) * 0.5
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, kernel_size) / sigma) ** 2)
    k1 = (pdf / pdf.sum()).to(x)
    kernel = (k1[:, None] @ k1[None, :]).expand(x.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), kernel, groups=x.shape[-3])


def _map_sides(total: int, lh: int, lw: int) -> tuple[int, int]:
    """The (rows, cols) grid of `total` attention tokens for an lh x lw latent: the divisor of total
    nearest sqrt(total·lh/lw), searched outwards as ComfyUI does."""
    guess = round(math.sqrt((lh / lw) * total))
    for i in range(math.floor(math.sqrt(total) / 2)):
        for j in (guess + i, max(1, guess - i)):
            if total % j == 0:
                return j, total // j
    raise ValueError(f"SelfAttentionGuidance: no grid for {total} attention tokens")


def sag_degraded(x0: torch.Tensor, scores: torch.Tensor, blur_sigma: float, threshold: float = 1.0):
    """x0 blurred where the (head-averaged) self-attention each key receives exceeds `threshold`."""
    b, _, lh, lw = x0.shape
    _, hw1, hw2 = scores.shape
    mask = scores.reshape(b, -1, hw1, hw2).mean(1).sum(1) > threshold
    rows, cols = _map_sides(mask.shape[-1], lh, lw)
    mask = F.interpolate(mask.reshape(b, rows, cols).unsqueeze(1).to(scores.dtype), (lh, lw))
    return gaussian_blur(x0, 9, blur_sigma) * mask + x0 * (1 - mask)


@api.node(
    "SelfAttentionGuidance",
    category=TESTING,
    experimental=True,
    display_name="Self-Attention Guidance",
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("scale", 0.5, min=-2.0, max=5.0, step=0.01),
        api.Float("blur_sigma", 2.0, min=0.0, max=10.0, step=0.1),
    ],
    outputs=[api.MODEL],
)
def self_attention_guidance(model: Any, scale: float, blur_sigma: float):
    """Hong et al. 2023 (SAG): the unconditional x0 blurred where the middle block's self-attention
    concentrates, re-noised and predicted again; the guided x0 moves by scale · (blurred - that)."""
    recorded: dict[str, torch.Tensor] = {}

    def record(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        heads, order = extra["n_heads"], extra["cond_or_uncond"]
        out, scores = attention_with_scores(q, k, v, heads)
        if 1 in order:
            n = heads * (q.shape[0] // len(order))
            i = order.index(1)
            recorded["scores"] = scores[n * i : n * (i + 1)]
        return out

    def post_cfg(args: dict[str, Any]) -> torch.Tensor:
        den, x, uncond = args["denoised"], args["input"], args["uncond_denoised"]
        if min(den.shape[2:]) <= 4 or "scores" not in recorded:  # too small for the blur's padding
            return den
        degraded = sag_degraded(uncond, recorded["scores"], blur_sigma)
        noised = degraded + x - uncond
        sag = evaluate_conditioning(
            args["model"], args["uncond"], noised, args["sigma"], dict(args["model_options"])
        )
        return den + (degraded - sag) * scale

    m = model.clone()
    m.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)
    m.set_model_attn1_replace(record, "middle", 0, 0)
    return (m,)


NODES = [
    rescale_cfg,
    perturbed_attention_guidance,
    epsilon_scaling,
    cfg_zero_star,
    cfg_norm,
    mahiro,
    tcfg,
    fresca,
    perp_neg_model,
    perp_neg_guider,
    self_attention_guidance,
]
