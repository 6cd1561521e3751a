"""RenormCFG (ComfyUI's nodes_lumina2) and SkipLayerGuidanceDiTSimple (nodes_slg): guidance patches on a
MODEL clone.

- RenormCFG: while sigma < `cfg_trunc`, classifier-free guidance whose result is scaled down, per batch
  item, to at most `renorm_cfg` times the norm of the positive estimate (0: no limit); from `cfg_trunc`
  up, the positive estimate alone. ComfyUI splits the channels at the diffusion model's input channel
  count and guides only the first part; for every model here that count is at least the latent's
  channels (an inpainting UNet's is larger), so all channels are guided, as in ComfyUI.
- SkipLayerGuidanceDiTSimple: the negative side is evaluated with the listed transformer blocks skipped
  within the step range (engine.handles.flow_guidance.skip_layer_guidance_simple).
"""

from __future__ import annotations

from typing import Any

import torch

from engine import api
from engine.api import sampling

from .flow import _layers


def renorm_cfg_function(cfg_trunc: float, renorm_cfg: float) -> Any:
    """The sampler CFG function (ComfyUI's args dict -> x - denoised) RenormCFG installs."""

    def cfg(args: dict[str, Any]) -> torch.Tensor:
        cond, uncond, x = args["cond_denoised"], args["uncond_denoised"], args["input"]
        if float(args["timestep"].reshape(-1)[0]) >= cfg_trunc:
            return x - cond
        guided = uncond + args["cond_scale"] * (cond - uncond)
        if renorm_cfg > 0.0:
            dims = tuple(range(1, guided.ndim))
            limit = torch.linalg.vector_norm(cond, dim=dims, keepdim=True) * renorm_cfg
            norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
            guided = torch.where(norm >= limit, guided * (limit / norm), guided)
        return x - guided

    return cfg


@api.node(
    "RenormCFG",
    category="advanced/model",
    inputs=[
        api.Input("model", api.MODEL),
        api.Float("cfg_trunc", 100, min=0.0, max=100.0, step=0.01),
        api.Float("renorm_cfg", 1.0, min=0.0, max=100.0, step=0.01),
    ],
    outputs=[api.MODEL],
)
def renorm_cfg(model: Any, cfg_trunc: float, renorm_cfg: float):
    """CFG with the guided estimate's norm capped at renorm_cfg x the positive's, below sigma cfg_trunc."""
    m = model.clone()
    m.set_model_sampler_cfg_function(renorm_cfg_function(cfg_trunc, renorm_cfg))
    return (m,)


@api.node(
    "SkipLayerGuidanceDiTSimple",
    category="advanced/guidance",
    experimental=True,
    inputs=[
        api.Input("model", api.MODEL),
        _layers("double_layers"),
        _layers("single_layers"),
        api.Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
        api.Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[api.MODEL],
)
def skip_layer_guidance_dit_simple(
    model: Any, double_layers: str, single_layers: str, start_percent: float, end_percent: float
):
    """The negative pass with the listed double / single transformer blocks skipped (SD3, Flux)."""
    m = sampling.skip_layer_guidance_simple(
        model,
        double_layers=double_layers,
        single_layers=single_layers,
        start_percent=start_percent,
        end_percent=end_percent,
    )
    return (m,)


NODES = [renorm_cfg, skip_layer_guidance_dit_simple]
