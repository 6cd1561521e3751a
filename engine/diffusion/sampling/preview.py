"""Fast latent → RGB previews: a per-family linear map from latent channels to RGB.

The factors are the least-squares fits of decoded RGB on latent channels that ComfyUI ships for
its Latent2RGB previewer (SD1.x/2.x share the SD VAE; SDXL has its own VAE).
"""

from __future__ import annotations

import torch

_SD15 = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)

LATENT_RGB: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float] | None]] = {
    "sd1": (_SD15, None),
    "sd2": (_SD15, None),
    "sdxl": (_SDXL, _SDXL_BIAS),
}


def latent_to_rgb(latent: torch.Tensor, family: str = "sd1") -> torch.Tensor:
    """(B, 4, h, w) latent (scaled, as samplers see it) → (B, h, w, 3) float image in 0..1."""
    try:
        factors, bias = LATENT_RGB[family.lower()]
    except KeyError:
        raise KeyError(
            f"no latent→RGB factors for family {family!r}; known: {', '.join(LATENT_RGB)}"
        ) from None
    if latent.ndim != 4 or latent.shape[1] != len(factors):
        raise ValueError(
            f"latent_to_rgb({family!r}) expects (B, {len(factors)}, h, w), got {tuple(latent.shape)}"
        )
    m = torch.tensor(factors, dtype=torch.float32, device=latent.device)
    rgb = torch.einsum("bchw,cr->bhwr", latent.float(), m)
    if bias is not None:
        rgb = rgb + torch.tensor(bias, device=latent.device)
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)
