"""ComfyUI's comfy_extras.nodes_custom_sampler: its node classes (diffgraph's nodes) and the NOISE / GUIDER
objects packs build themselves (Noise_RandomNoise, Noise_EmptyNoise, Guider_Basic, Guider_DualCFG)."""

from __future__ import annotations

from typing import Any

import torch

from engine.comfy_compat.classic_nodes import export_classes
from engine.comfy_compat.comfy_sampling import CFGGuider, calc_cond_batch, cfg_function
from engine.diffusion.sampling.noise import prepare_noise as _prepare_noise
from engine.handles.sampling import DisabledNoise as _DisabledNoise
from engine.handles.sampling import RandomNoise as _RandomNoise


class Noise_RandomNoise(_RandomNoise):  # noqa: N801 - ComfyUI's name
    """NOISE from a seed (diffgraph's RandomNoise, with ComfyUI's `generate_noise`)."""

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        samples = input_latent["samples"]
        return _prepare_noise(samples, int(self.seed), input_latent.get("batch_index"))


class Noise_EmptyNoise(_DisabledNoise):  # noqa: N801 - ComfyUI's name
    """No initial noise (diffgraph's DisabledNoise, with ComfyUI's `generate_noise`)."""

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        samples = input_latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


class Guider_Basic(CFGGuider):  # noqa: N801 - ComfyUI's name
    """A guider with one conditioning and no classifier-free guidance."""

    def set_conds(self, positive: Any) -> None:  # type: ignore[override]
        self.inner_set_conds({"positive": positive})


class Guider_DualCFG(CFGGuider):  # noqa: N801 - ComfyUI's name
    """Two-scale guidance: positive vs middle (cfg1) and middle vs negative (cfg2), regular or nested."""

    def set_cfg(self, cfg1: float, cfg2: float = 1.0, nested: bool = False) -> None:  # type: ignore[override]
        self.cfg1, self.cfg2, self.nested = cfg1, cfg2, nested

    def set_conds(self, positive: Any, middle: Any, negative: Any) -> None:  # type: ignore[override]
        self.inner_set_conds({"positive": positive, "middle": middle, "negative": negative})

    def predict_noise(
        self, x: torch.Tensor, timestep: torch.Tensor, model_options: Any = None, seed: Any = None
    ) -> torch.Tensor:
        options = model_options or {}
        conds = [self.conds.get("negative"), self.conds.get("middle"), self.conds.get("positive")]
        negative, middle, positive = calc_cond_batch(self.inner_model, conds, x, timestep, options)
        if self.nested:
            text = cfg_function(self.inner_model, positive, middle, self.cfg1, x, timestep, options)
            return negative + self.cfg2 * (text - negative)
        guided = cfg_function(self.inner_model, middle, negative, self.cfg2, x, timestep, options)
        return guided + (positive - middle) * self.cfg1


export_classes(globals())
