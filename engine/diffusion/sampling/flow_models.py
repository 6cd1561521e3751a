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

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .diffusion_model import DiffusionModel
from .flux_inputs import pack_references, same_references, unpack_references
from .model_sampling import ModelSamplingFlow, ModelSamplingFlux, auraflow_model_sampling, sd3_model_sampling

FLUX_DEFAULT_GUIDANCE = 3.5
LATENT_CHANNELS = 16


class TransformerAdapter(nn.Module):
    """An MMDiT or Flux model behind the UNet call contract. Of ``transformer_options`` it reads ComfyUI's
    "dit" block replacements (``patches_replace["dit"]``, e.g. skip-layer guidance's).

    ``flux=True``: ``y`` is [pooled CLIP-L, guidance] (see the module doc) and is wanted in float32
    (``y_dtype``), a missing ``context`` becomes an empty token sequence.
    """

    def __init__(self, model: Any, *, flux: bool):
        super().__init__()
        self.model = model
        self.flux = flux
        self.y_dtype = torch.float32 if flux else None

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The model's parameters, one in its compute dtype first: ``DiffusionModel`` casts the inputs to
        the first parameter's dtype, which for fp8-stored matmul weights would be fp8 (biases keep the
        compute dtype)."""
        params = list(super().parameters(recurse))
        first = [p for p in params if p is self.model.img_in.bias] if self.flux else []
        if not self.flux:
            first = [p for p in params if p is self.model.context_embedder.bias]
        yield from first
        yield from (p for p in params if not any(p is f for f in first))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        replace = ((transformer_options or {}).get("patches_replace") or {}).get("dit") or None
        if not self.flux:
            return self.model(x, timesteps, context=context, y=y, control=control, blocks_replace=replace)
        cfg = self.model.config
        b = x.shape[0]
        if context is None:
            context = x.new_zeros(b, 0, cfg.context_in_dim)
        refs = None if y is None else y[:, cfg.vec_in_dim + 1 :]
        if refs is not None and refs.shape[1] and not same_references(refs):
            # Entries with different reference latents but equal y widths: one call per row.
            t = timesteps.reshape(-1).expand(b)
            assert y is not None
            return torch.cat(
                [
                    self.forward(
                        x[i : i + 1],
                        t[i : i + 1],
                        context[i : i + 1],
                        y[i : i + 1],
                        control,
                        transformer_options,
                    )
                    for i in range(b)
                ]
            )
        pooled, guidance = split_flux_y(y, b, cfg.vec_in_dim, x)
        ref_latents, method = (
            unpack_references(refs) if refs is not None and refs.shape[1] else (None, "offset")
        )
        return self.model(
            x,
            timesteps,
            context,
            pooled,
            guidance=guidance,
            blocks_replace=replace,
            ref_latents=ref_latents,
            ref_method=method,
        )


def split_flux_y(
    y: torch.Tensor | None, b: int, vec_in_dim: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``y`` (B, vec_in_dim + 1 [+ references]) -> pooled (B, vec_in_dim) and guidance (B,) or None (NaN
    everywhere); reference-latent columns after the guidance (`flux_inputs.pack_references`) are ignored."""
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
        refs = cond.get("reference_latents")
        if refs:  # one row per reference batch item when the references hold more than the pooled vector
            p = p.expand(max(p.shape[0], *(int(torch.as_tensor(r).shape[0]) for r in refs)), -1)
        col = torch.full((p.shape[0], 1), float("nan") if g is None else float(g), device=p.device)
        packed = pack_references(cond, p.shape[0])
        return torch.cat([p, col] if packed is None else [p, col, packed.to(p.device)], dim=1)

    return build


def default_model_sampling(model: Any, shift: float | None = None) -> ModelSamplingFlow:
    """The family's model sampling: SD3 ``sd3_model_sampling`` (shift 3.0 by default), FLUX.1 dev
    `ModelSamplingFlux` (mu 1.15), schnell the unshifted multiplier-1 flow (shift 1.0)."""
    if not is_flux(model):
        return sd3_model_sampling(3.0 if shift is None else shift)
    if model.config.guidance_embed:
        return ModelSamplingFlux(1.15 if shift is None else shift)
    return auraflow_model_sampling(1.0 if shift is None else shift)


def is_flux(model: Any) -> bool:
    return hasattr(model.config, "vec_in_dim")


def flow_model_parts(
    model: Any, shift: float | None = None
) -> tuple[TransformerAdapter, ModelSamplingFlow, Any]:
    """(the network behind the UNet contract, its default model sampling, its ``adm_builder``) for an
    MMDiT or Flux model: what a ``DiffusionModel`` or a MODEL handle is made of."""
    flux = is_flux(model)
    adm = flux_adm_builder(model.config.vec_in_dim) if flux else sd3_adm
    return TransformerAdapter(model, flux=flux), default_model_sampling(model, shift), adm


def mmdit_diffusion_model(model: Any, *, shift: float = 3.0) -> DiffusionModel:
    """An SD3 / SD3.5 MMDiT as a ``DiffusionModel`` (flow prediction, SD3 shift, 16 latent channels)."""
    net, ms, adm = flow_model_parts(model, shift)
    return DiffusionModel(net, ms, adm_builder=adm, latent_channels=LATENT_CHANNELS)


def flux_diffusion_model(model: Any, *, shift: float | None = None) -> DiffusionModel:
    """A FLUX.1 model as a ``DiffusionModel``: dev (guidance_in) samples with `ModelSamplingFlux` (mu =
    ``shift``, 1.15 by default), schnell with the unshifted multiplier-1 flow (``shift`` 1.0 by default)."""
    net, ms, adm = flow_model_parts(model, shift)
    return DiffusionModel(net, ms, adm_builder=adm, latent_channels=LATENT_CHANNELS)
