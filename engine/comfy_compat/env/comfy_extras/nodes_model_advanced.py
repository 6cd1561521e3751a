"""ComfyUI's comfy_extras.nodes_model_advanced: its node classes (diffgraph's nodes, or stand-ins) and the
model-sampling classes packs import from it (LCM, ModelSamplingDiscreteDistilled)."""

from __future__ import annotations

from typing import Any

import comfy.model_sampling as _model_sampling  # type: ignore[import-not-found]
import torch

from engine.comfy_compat.classic_nodes import export_classes

rescale_zero_terminal_snr_sigmas = _model_sampling.rescale_zero_terminal_snr_sigmas


class LCM(_model_sampling.EPS):  # type: ignore[misc,name-defined]
    """Latent-consistency parameterisation: x0 = c_out·(x − eps·sigma) + c_skip·x with sigma_data 0.5 and
    the timestep scaled by 10 (Luo et al. 2023, LCM's boundary conditions)."""

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        shape = sigma.shape[:1] + (1,) * (model_output.ndim - 1)
        timestep = self.timestep(sigma).view(shape)
        sigma = sigma.view(shape)
        x0 = model_input - model_output * sigma
        sigma_data = 0.5
        scaled = timestep * 10.0
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
        return c_out * x0 + c_skip * model_input


class ModelSamplingDiscreteDistilled(_model_sampling.ModelSamplingDiscrete):  # type: ignore[misc,name-defined]
    """A discrete schedule kept at `original_timesteps` evenly strided entries (LCM's 50)."""

    original_timesteps = 50

    def __init__(self, model_config: Any = None, zsnr: Any = None) -> None:
        super().__init__(model_config, zsnr=zsnr)
        total = len(self.sigmas)
        self.skip_steps = total // self.original_timesteps
        kept = torch.zeros(self.original_timesteps, dtype=torch.float32)
        for i in range(self.original_timesteps):
            kept[self.original_timesteps - 1 - i] = self.sigmas[total - 1 - i * self.skip_steps]
        self.set_sigmas(kept)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigmas = self.sigmas.log()
        dists = sigma.log().to(log_sigmas.device) - log_sigmas[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        return (index * self.skip_steps + (self.skip_steps - 1)).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        log_sigmas = self.sigmas.log()
        t = ((timestep.float().to(log_sigmas.device) - (self.skip_steps - 1)) / self.skip_steps).clamp(
            0, len(log_sigmas) - 1
        )
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp().to(timestep.device)


export_classes(globals())
