"""How a diffusion model relates noise level, timestep and its output ("model sampling").

Conventions (k-diffusion / Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", EDM): samplers work on ``x = x0 + sigma * n`` (variance exploding form) and a
denoiser ``D(x, sigma) ≈ x0``. A model trained in another parameterisation is adapted here:

* ``eps``  - the network predicts the noise n from the VP-scaled input x / sqrt(sigma² + 1)
  (Ho et al. 2020, DDPM; Stable Diffusion 1.x/2.x base, SDXL).
* ``v``    - the network predicts v = alpha·n − sigma_vp·x0 (Salimans & Ho 2022, "Progressive
  Distillation"); used by SD 2.x 768-v models.
* ``flow`` - rectified flow / flow matching, ``x = (1 − sigma)·x0 + sigma·n`` with sigma in 0..1 and
  the network predicting the velocity n − x0 (Lipman et al. 2023; Esser et al. 2024, SD3). This is
  the extension point SD3 will use; the rest of the stack only sees ``ModelSampling``.
"""

from __future__ import annotations

import math

import torch

PREDICTION_TYPES = ("eps", "v", "flow")


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) or scalar sigma so it broadcasts over ``like`` (B, C, H, W)."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1))


class ModelSampling:
    """Base class: the prediction parameterisation. Subclasses supply the noise schedule.

    Subclasses must set ``self.sigmas`` (ascending, one per training timestep) and implement
    ``timestep(sigma)``, ``sigma(timestep)`` and ``percent_to_sigma(percent)``.
    """

    prediction: str
    sigmas: torch.Tensor

    def __init__(self, prediction: str) -> None:
        if prediction not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction type {prediction!r}; expected one of {PREDICTION_TYPES} "
                "(eps: SD1.x/SDXL, v: SD2.x 768-v, flow: rectified-flow models)"
            )
        self.prediction = prediction
        # The VE-form data std used by the v-parameterisation; 1.0 for latent diffusion.
        self.sigma_data = 1.0

    # ---- schedule interface (subclasses) -------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def percent_to_sigma(self, percent: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep fed to the network for ``sigma`` (by default the same as ``timestep``)."""
        return self.timestep(sigma)

    # ---- parameterisation ------------------------------------------------------------------
    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Scale the VE-form x to what the network was trained on."""
        if self.prediction == "flow":
            return x
        s = _bcast(sigma, x)
        # x_vp = alpha * x0 + sigma_vp * n with alpha = 1/sqrt(1+sigma²): divide the VE x by sqrt(1+sigma²).
        return x / torch.sqrt(s * s + self.sigma_data**2)

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Turn the network output into the x0 estimate D(x, sigma)."""
        s = _bcast(sigma, x)
        if self.prediction == "eps":
            return x - model_output * s
        if self.prediction == "v":
            sd2 = self.sigma_data**2
            # Salimans & Ho 2022 in VE form (also Karras et al. 2022, Table 1 "VP"/v columns).
            return x * sd2 / (s * s + sd2) - model_output * s * self.sigma_data / torch.sqrt(s * s + sd2)
        # flow: velocity v = n − x0 and x = (1 − s)x0 + s·n  ⇒  x0 = x − s·v
        return x - model_output * s

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        """The noised starting point for sampling at ``sigma`` from ``latent``.

        For eps/v models at the very top of the schedule (``max_denoise``) ComfyUI scales the noise by
        sqrt(1 + sigma²) rather than sigma, so x has the variance of the VP prior; we do the same so
        seeds give the same pictures.
        """
        s = _bcast(sigma, noise)
        if self.prediction == "flow":
            return s * noise + (1.0 - s) * latent
        if max_denoise:
            return latent + noise * torch.sqrt(1.0 + s * s)
        return latent + noise * s

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Undo the scale that ``noise_scaling`` puts on the latent (only flow scales it)."""
        if self.prediction == "flow":
            return latent / (1.0 - _bcast(sigma, latent))
        return latent


class ModelSamplingDiscrete(ModelSampling):
    """The discrete DDPM schedule of Stable Diffusion as a table of sigmas.

    Betas are "scaled linear" (Rombach et al. 2022, LDM configs): linear in sqrt(beta) from
    ``linear_start`` to ``linear_end`` over ``num_timesteps`` steps; alpha_bar = cumprod(1 − beta) and
    sigma_t = sqrt((1 − alpha_bar_t) / alpha_bar_t) (Karras et al. 2022, Table 1, VP column).
    Timestep ↔ sigma conversion interpolates linearly in log sigma between the discrete entries
    (k-diffusion's ``DiscreteSchedule`` without quantisation, and diffusers' ``_sigma_to_t``).

    ``quantize_timesteps`` (default True): the UNet is fed the *nearest* training timestep (in log
    sigma) rather than the interpolated one, as ComfyUI (and k-diffusion's quantised mode) do - the
    network only ever saw integer timesteps, and this keeps a seed's picture the same as ComfyUI's
    for the deterministic samplers. ``timestep()`` itself always interpolates.
    """

    def __init__(
        self,
        prediction: str = "eps",
        *,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        num_timesteps: int = 1000,
        quantize_timesteps: bool = True,
    ) -> None:
        super().__init__(prediction)
        self.quantize_timesteps = quantize_timesteps
        if prediction == "flow":
            raise ValueError(
                "ModelSamplingDiscrete is for eps/v models; use ModelSamplingFlow for flow models"
            )
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log()  # float64, used for interpolation
        self.num_timesteps = num_timesteps

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        log_s = sigma.detach().to("cpu", torch.float64).clamp_min(1e-30).log().reshape(-1)
        ls = self.log_sigmas
        idx = torch.searchsorted(ls, log_s).clamp(1, len(ls) - 1)
        lo, hi = ls[idx - 1], ls[idx]
        w = ((log_s - lo) / (hi - lo)).clamp(0.0, 1.0)
        t = (idx - 1).to(torch.float64) + w
        out_dtype = sigma.dtype if sigma.is_floating_point() else torch.float32
        return t.reshape(sigma.shape).to(sigma.device, out_dtype)

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        t = self.timestep(sigma)
        return t.round() if self.quantize_timesteps else t

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        t = timestep.detach().to("cpu", torch.float64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long()
        hi = t.ceil().long()
        w = t - lo.to(torch.float64)
        log_s = (1.0 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]
        out_dtype = timestep.dtype if timestep.is_floating_point() else torch.float32
        return log_s.exp().to(timestep.device, out_dtype)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the schedule (0 = start, all noise; 1 = end), as ComfyUI's
        ``percent_to_sigma``: 0 maps to "above any sigma" and 1 to 0 so ranges are inclusive."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.num_timesteps - 1))))


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """SD3's timestep shift (Esser et al. 2024, eq. 23): shift·t / (1 + (shift − 1)·t), t in 0..1."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def flux_time_shift(mu: float, t: torch.Tensor, exponent: float = 1.0) -> torch.Tensor:
    """FLUX.1's exponential shift: e^mu / (e^mu + (1/t − 1)^exponent), t in (0, 1]."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0) ** exponent)


# ModelSamplingFlux's resolution rule: mu grows linearly with the image-token count (2x2 patches of
# 8x-downscaled latents), base_shift at 256 tokens, max_shift at 4096 (1024x1024).
FLUX_SHIFT_TOKENS = (256, 4096)


def flux_shift_for_resolution(
    width: int, height: int, *, base_shift: float = 0.5, max_shift: float = 1.15
) -> float:
    """``mu`` for a width x height (pixel) image, as ComfyUI's ModelSamplingFlux node computes it."""
    lo, hi = FLUX_SHIFT_TOKENS
    slope = (max_shift - base_shift) / (hi - lo)
    tokens = width * height / (8 * 8 * 2 * 2)
    return tokens * slope + (base_shift - slope * lo)


class ModelSamplingFlow(ModelSampling):
    """Rectified-flow schedule with a timestep shift (Esser et al. 2024, SD3, eq. 23).

    sigma(t) = shift·t / (1 + (shift − 1)·t) for t = timestep / multiplier in (0, 1]; shift > 1
    spends more steps at high noise, which higher resolutions need. The network sees
    ``timestep = sigma * multiplier``: 1000 for SD3 (shift 3.0 by default), 1.0 for AuraFlow (shift
    1.73) and FLUX.1 schnell (shift 1.0). The sigma table has ``num_timesteps`` entries at
    t = i / num_timesteps, i = 1..num_timesteps, whatever the multiplier (as ComfyUI's
    ModelSamplingDiscreteFlow).
    """

    def __init__(self, shift: float = 1.0, *, multiplier: float = 1000.0, num_timesteps: int = 1000) -> None:
        super().__init__("flow")
        if shift <= 0:
            raise ValueError(f"flow shift must be > 0, got {shift}")
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        t = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps
        self.sigmas = self._shift(t).float()

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        return time_snr_shift(self.shift, t)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma) * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return self._shift(torch.as_tensor(timestep) / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self._shift(torch.tensor(1.0 - percent, dtype=torch.float64)))


class ModelSamplingFlux(ModelSamplingFlow):
    """FLUX.1 dev's flow schedule: sigma(t) = e^mu / (e^mu + 1/t − 1), the network sees t = sigma (0..1).

    ``shift`` is ``mu`` (1.15 by default: 1024x1024; see `flux_shift_for_resolution`). The sigma table has
    10000 entries, as ComfyUI's ModelSamplingFlux.
    """

    def __init__(self, shift: float = 1.15, *, num_timesteps: int = 10000) -> None:
        ModelSampling.__init__(self, "flow")
        self.shift = float(shift)
        self.multiplier = 1.0
        t = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps
        self.sigmas = self._shift(t).float()

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        return flux_time_shift(self.shift, torch.as_tensor(t))


def sd3_model_sampling(shift: float = 3.0) -> ModelSamplingFlow:
    """SD3 / SD3.5 (ComfyUI's ModelSamplingSD3 node, default shift 3.0, timesteps 0..1000)."""
    return ModelSamplingFlow(shift, multiplier=1000.0)


def auraflow_model_sampling(shift: float = 1.73) -> ModelSamplingFlow:
    """AuraFlow (ComfyUI's ModelSamplingAuraFlow: shift 1.73, multiplier 1.0); also FLUX.1 schnell at 1.0."""
    return ModelSamplingFlow(shift, multiplier=1.0)


def model_sampling_for(prediction_type: str, *, flow_shift: float = 1.0) -> ModelSampling:
    """The model sampling for a checkpoint's prediction type ("eps", "v" or "flow")."""
    if prediction_type == "flow":
        return ModelSamplingFlow(flow_shift)
    return ModelSamplingDiscrete(prediction_type)


def is_max_denoise(model_sampling: ModelSampling, sigmas: torch.Tensor) -> bool:
    """True when sampling starts at (or above) the top of the schedule, i.e. from pure noise."""
    first = float(sigmas[0])
    top = model_sampling.sigma_max
    return math.isclose(first, top, rel_tol=1e-5) or first > top
