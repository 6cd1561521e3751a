"""SD3 / SD3.5 (MMDiT) and FLUX.1 transformers as denoisers: adapters to the ``DiffusionModel`` contract.

``DiffusionModel`` calls its network as ``net(x, timesteps, context=, y=, control=, transformer_options=)``
with ``timesteps = model_sampling.model_timestep(sigma)`` and ``y`` from the model's ``adm_builder``.

- MMDiT takes timesteps in the 0..1000 training scale (``sigma * 1000``, `sd3_model_sampling`), the T5 +
  CLIP tokens as ``context`` and the pooled CLIP-L + CLIP-G vector (2048) as ``y`` (CONDITIONING's
  "pooled_output"; without one the pooled path is skipped, as ComfyUI does).
- Flux takes timesteps in 0..1 (`ModelSamplingFlux` for dev, unshifted multiplier-1 flow for schnell), the
  pooled CLIP-L vector and, for guidance-distilled dev, the guidance scale: CONDITIONING's "guidance"
  (FluxGuidance; 3.5 when absent, None = disabled by FluxDisableGuidance, as ComfyUI's Flux model). Each
  entry's guidance travels as one extra last column of ``y`` (NaN for "none"), so the batching of
  conditioning entries in ``guidance.py`` carries it per entry without knowing about it; the adapter
  splits it off again. Its ``y_dtype = float32`` keeps the guidance value unrounded until it is embedded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .diffusion_model import DiffusionModel
from .model_sampling import ModelSamplingFlow, ModelSamplingFlux, auraflow_model_sampling, sd3_model_sampling

FLUX_DEFAULT_GUIDANCE = 3.5
LATENT_CHANNELS = 16


class TransformerAdapter(nn.Module):
    """An MMDiT or Flux model behind the UNet call contract (``transformer_options`` is not used yet).

    ``flux=True``: ``y`` is [pooled CLIP-L, guidance] (see the module doc) and is wanted in float32
    (``y_dtype``), a missing ``context`` becomes an empty token sequence.
    """

    def __init__(self, model: Any, *, flux: bool):
        super().__init__()
        self.model = model
        self.flux = flux
        self.y_dtype = torch.float32 if flux else None

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        if not self.flux:
            return self.model(x, timesteps, context=context, y=y, control=control)
        cfg = self.model.config
        b = x.shape[0]
        if context is None:
            context = x.new_zeros(b, 0, cfg.context_in_dim)
        pooled, guidance = split_flux_y(y, b, cfg.vec_in_dim, x)
        return self.model(x, timesteps, context, pooled, guidance=guidance)


def split_flux_y(
    y: torch.Tensor | None, b: int, vec_in_dim: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``y`` (B, vec_in_dim + 1) -> pooled (B, vec_in_dim) and guidance (B,) or None (NaN everywhere)."""
    if y is None:
        return like.new_zeros(b, vec_in_dim), None
    pooled, g = y[:, :vec_in_dim], y[:, vec_in_dim:]
    if g.shape[1] == 0:
        return pooled, None
    g = g[:, 0].float()
    off = torch.isnan(g)
    if bool(off.all()):
        return pooled, None
    if bool(off.any()):
        raise ValueError(
            "Flux: conditioning entries sampled together mix guidance on and off (FluxDisableGuidance on "
            "only some of them); use the same setting for all entries"
        )
    return pooled, g


def sd3_adm(cond: Mapping[str, Any], width: int, height: int) -> torch.Tensor | None:
    """MMDiT's ``y``: the pooled CLIP-L + CLIP-G vector of a CONDITIONING entry (None if it has none)."""
    pooled = cond.get("pooled_output")
    return None if pooled is None else torch.as_tensor(pooled)


def flux_adm_builder(vec_in_dim: int) -> Any:
    """``adm_builder`` for Flux: [pooled CLIP-L (zeros if absent), guidance (3.5 default, NaN if None)]."""

    def build(cond: Mapping[str, Any], width: int, height: int) -> torch.Tensor:
        pooled = cond.get("pooled_output")
        p = torch.zeros(1, vec_in_dim) if pooled is None else torch.as_tensor(pooled).float()
        g = cond.get("guidance", FLUX_DEFAULT_GUIDANCE)
        col = torch.full((p.shape[0], 1), float("nan") if g is None else float(g), device=p.device)
        return torch.cat([p, col], dim=1)

    return build


def mmdit_diffusion_model(model: Any, *, shift: float = 3.0) -> DiffusionModel:
    """An SD3 / SD3.5 MMDiT as a ``DiffusionModel`` (flow prediction, SD3 shift, 16 latent channels)."""
    return DiffusionModel(
        TransformerAdapter(model, flux=False),
        sd3_model_sampling(shift),
        adm_builder=sd3_adm,
        latent_channels=LATENT_CHANNELS,
    )


def flux_diffusion_model(model: Any, *, shift: float | None = None) -> DiffusionModel:
    """A FLUX.1 model as a ``DiffusionModel``: dev (guidance_in) samples with `ModelSamplingFlux` (mu =
    ``shift``, 1.15 by default), schnell with the unshifted multiplier-1 flow (``shift`` 1.0 by default)."""
    ms: ModelSamplingFlow
    if model.config.guidance_embed:
        ms = ModelSamplingFlux(1.15 if shift is None else shift)
    else:
        ms = auraflow_model_sampling(1.0 if shift is None else shift)
    return DiffusionModel(
        TransformerAdapter(model, flux=True),
        ms,
        adm_builder=flux_adm_builder(model.config.vec_in_dim),
        latent_channels=LATENT_CHANNELS,
    )
