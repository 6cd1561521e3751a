"""Skip-layer guidance (SkipLayerGuidanceDiT / SkipLayerGuidanceSD3) on MODEL handles, ComfyUI's recipe
(``comfy_extras/nodes_slg.py``).

While sigma is within [sigma(end_percent), sigma(start_percent)], every step evaluates the positive
conditioning once more with the listed transformer blocks skipped (ComfyUI's "dit" block replacement by a
function that returns its input; `TransformerAdapter` hands those to the MMDiT / Flux models) and moves the
guided estimate away from it: ``denoised + (cond_denoised - skipped) * scale``; ``rescaling_scale`` then
blends in a rescale of the result's standard deviation to the positive estimate's. It runs as a post-CFG
function of the MODEL's options, so it composes with CFG, FluxGuidance and other guidance hooks.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from engine.diffusion.sampling.guidance import CFGDenoiser
from engine.handles.model import ModelHandle

# Guidance hooks left out of the extra evaluation: it is a plain positive-only model call.
_HOOKS = ("sampler_cfg_function", "sampler_post_cfg_function", "sampler_pre_cfg_function")


def parse_layers(text: str) -> list[int]:
    """Block indices from a text such as "7, 8, 9" (every run of digits, as ComfyUI reads them)."""
    return [int(n) for n in re.findall(r"\d+", text)]


def _skip(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return args


def _skipping_options(options: dict[str, Any], double: list[int], single: list[int]) -> dict[str, Any]:
    out = {k: v for k, v in options.items() if k not in _HOOKS}
    topts = dict(out.get("transformer_options") or {})
    patches = dict(topts.get("patches_replace") or {})
    dit = dict(patches.get("dit") or {})
    dit.update({("double_block", i): _skip for i in double})
    dit.update({("single_block", i): _skip for i in single})
    patches["dit"] = dit
    topts["patches_replace"] = patches
    out["transformer_options"] = topts
    return out


def skip_layer_guidance(
    model: ModelHandle,
    *,
    double_layers: str,
    single_layers: str,
    scale: float,
    start_percent: float,
    end_percent: float,
    rescaling_scale: float = 0.0,
) -> ModelHandle:
    """A clone of `model` that applies skip-layer guidance (see the module docstring); the model itself
    when no layer is listed. Block numbers the model does not have are ignored, as in ComfyUI
    (SkipLayerGuidanceDiT's default single_layers on SD3, which has none)."""
    double, single = parse_layers(double_layers), parse_layers(single_layers)
    if not double and not single:
        return model
    sampling = model.model_sampling
    sigma_start = float(sampling.percent_to_sigma(start_percent))
    sigma_end = float(sampling.percent_to_sigma(end_percent))
    m = model.clone()

    def post_cfg(args: dict[str, Any]) -> torch.Tensor:
        denoised, sigma, x = args["denoised"], args["sigma"], args["input"]
        s = float(sigma.reshape(-1)[0])
        if scale <= 0 or not sigma_end <= s <= sigma_start:
            return denoised
        options = _skipping_options(dict(args["model_options"]), double, single)
        skipped = CFGDenoiser(m.diffusion_model(), args["cond"], None, 1.0, like=x, model_options=options)(
            x, sigma
        )
        cond = args["cond_denoised"]
        out = denoised + (cond - skipped) * scale
        if rescaling_scale != 0:
            factor = cond.std() / out.std()
            out = out * (rescaling_scale * factor + (1 - rescaling_scale))
        return out

    m.set_model_sampler_post_cfg_function(post_cfg)
    return m


def skip_layer_guidance_simple(
    model: ModelHandle, *, double_layers: str, single_layers: str, start_percent: float, end_percent: float
) -> ModelHandle:
    """SkipLayerGuidanceDiTSimple: while sigma is in [sigma(end_percent), sigma(start_percent)] the
    negative side is evaluated with the listed blocks skipped (the positive side as usual). ComfyUI swaps
    the model call itself (a calc_cond_batch function); here a pre-CFG function, first in the list,
    replaces the negative prediction with the skipped one before any other guidance sees it (the same
    result, plus the regular negative evaluation)."""
    double, single = parse_layers(double_layers), parse_layers(single_layers)
    if not double and not single:
        return model
    sampling = model.model_sampling
    sigma_start = float(sampling.percent_to_sigma(start_percent))
    sigma_end = float(sampling.percent_to_sigma(end_percent))
    m = model.clone()

    def pre_cfg(args: dict[str, Any]) -> list[torch.Tensor]:
        out, conds, sigma, x = list(args["conds_out"]), args["conds"], args["sigma"], args["input"]
        s = float(sigma.reshape(-1)[0])
        if conds[1] is None or not sigma_end <= s <= sigma_start:
            return out
        options = _skipping_options(dict(args["model_options"]), double, single)
        out[1] = CFGDenoiser(m.diffusion_model(), conds[1], None, 1.0, like=x, model_options=options)(
            x, sigma
        )
        return out

    m.model_options["sampler_pre_cfg_function"] = [
        pre_cfg,
        *m.model_options.get("sampler_pre_cfg_function", ()),
    ]
    return m
