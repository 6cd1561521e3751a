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

# The 16-channel latents of SD3 / SD3.5 and FLUX.1 (ComfyUI's latent_formats SD3 and Flux).
_SD3 = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
)  # fmt: skip
_SD3_BIAS = (0.2394, 0.2135, 0.1925)
_FLUX = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)  # fmt: skip
_FLUX_BIAS = (-0.0329, -0.0718, -0.0851)

LATENT_RGB: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float] | None]] = {
    "sd1": (_SD15, None),
    "sd2": (_SD15, None),
    "sdxl": (_SDXL, _SDXL_BIAS),
    "sd3": (_SD3, _SD3_BIAS),
    "flux": (_FLUX, _FLUX_BIAS),
}


def latent_to_rgb(latent: torch.Tensor, family: str = "sd1") -> torch.Tensor:
    """(B, C, h, w) latent (scaled, as samplers see it; C = 4, or 16 for sd3 / flux) → (B, h, w, 3) float
    image in 0..1."""
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
