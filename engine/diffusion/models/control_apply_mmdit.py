"""An SD3 ControlNet bound to a control image: ``ControlApplication`` for ``MMDiTControlNet``.

What differs from the UNet ControlNets (facts from ComfyUI's ``comfy/controlnet.py``, ``ControlNet.get_control``
with ``load_controlnet_mmdit``'s settings): the control image is resized to the latent's size times the
VAE's downscale (nearest-exact, centre crop), *encoded by the VAE* and scaled by SD3's latent factor
(1.5305) without SD3's shift; the encoded hint is kept per latent size. The ControlNet sees the model's
input and timestep (``sigma * 1000`` for SD3) from the sampled model's flow model sampling (``pre_run``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .control_apply import ControlApplication, Residuals, _batch, fit_hint
from .latent_formats import SD3
from .mmdit_controlnet import MMDiTControlNet
from .mmdit_controlnet_sd35 import SD35ControlNet

HintEncoder = Callable[[torch.Tensor], torch.Tensor]


class MMDiTControlApplication(ControlApplication):
    """``encode``: (B, 3, H, W) pixels in 0..1 -> raw VAE latents (B, 16, H/f, W/f); ``downscale``: f."""

    def __init__(
        self,
        model: MMDiTControlNet | SD35ControlNet,
        hint: torch.Tensor,
        *,
        encode: HintEncoder | None,
        downscale: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, hint, **kwargs)  # type: ignore[arg-type]
        self.encode = encode
        self.downscale = downscale
        self._latent_hint: tuple[tuple[int, int], torch.Tensor] | None = None

    def _control_latent(self, h: int, w: int) -> torch.Tensor:
        if self._latent_hint is not None and self._latent_hint[0] == (h, w):
            return self._latent_hint[1]
        if self.encode is None:
            raise ValueError(
                "this SD3 ControlNet needs a VAE to encode its control image: use ControlNetApplySD3 (or "
                "ControlNetApplyAdvanced) with the VAE input connected"
            )
        f = self.downscale
        latent = self._to_latent(fit_hint(self.hint.float(), h * f, w * f)[:, :3], self.encode)
        self._latent_hint = ((h, w), latent)
        return latent

    def _to_latent(self, pixels: torch.Tensor, encode: HintEncoder) -> torch.Tensor:
        """The resized control image (B, 3, H, W) -> the control latent the ControlNet takes."""
        return encode(pixels).float() * SD3.scale_factor  # SD3's scale, without its shift

    def _run(
        self, xin: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None, hint: torch.Tensor, y: Any
    ) -> Residuals:
        """The ControlNet on inputs already on its device and in its dtype."""
        model = self.model
        assert isinstance(model, MMDiTControlNet)
        if hint.shape[1] != model.config.control_channels:
            raise ValueError(
                f"SD3 ControlNet takes {model.config.control_channels} control channels, the VAE gives "
                f"{hint.shape[1]} (inpainting ControlNets with a mask channel are not supported yet)"
            )
        return model(xin, t, context, hint, y)  # type: ignore[no-any-return]

    def _own(
        self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor | None, y: torch.Tensor | None
    ) -> Residuals:
        p = next(self.model.parameters())
        dtype, device = p.dtype, p.device
        b, _, h, w = x.shape
        latent = self._control_latent(h, w)
        ms = self._sampling()
        sig = sigma.reshape(-1)
        xin = ms.calculate_input(sig, x)
        t = ms.model_timestep(sig).float()
        raw = self._run(
            xin.to(device, dtype),
            t.to(device),
            None if context is None else context.to(device, dtype),
            _batch(latent, b).to(device, dtype),
            None if y is None else y.to(device, dtype),
        )
        return {
            k: [None if r is None else (r * self.strength).to(x.device, x.dtype) for r in v]
            for k, v in raw.items()
        }


def sd35_preprocess(pixels: torch.Tensor, control_type: str | None) -> torch.Tensor:
    """What Stability's SD3.5 ControlNets expect of their resized control image (B, 3, H, W), before the VAE
    (ComfyUI's ``load_controlnet_sd35``, kept exactly: canny edges are scaled to ``x * 127.5 + 0.5``, depth
    maps inverted, blur hints used as they are)."""
    if control_type == "canny":
        return pixels * 255 * 0.5 + 0.5
    if control_type == "depth":
        return 1.0 - pixels
    return pixels


class SD35ControlApplication(MMDiTControlApplication):
    """``MMDiTControlApplication`` for Stability's ``SD35ControlNet``: the hint is preprocessed by the file's
    ``control_type`` and mapped with SD3's full latent format (scale *and* shift); the ControlNet sees the
    real pooled vector and no text tokens; the sampled model's patch embedding is copied into it when
    sampling starts (``bind_model``, called by the guidance with the model being sampled)."""

    def _bind(self, model: Any) -> None:
        net = getattr(model, "unet", model)
        main = getattr(net, "model", net)  # the flow adapter holds the MMDiT as .model
        if not hasattr(main, "x_embedder"):
            raise ValueError("an SD3.5 ControlNet can only be used with an SD3 / SD3.5 model")
        cn = self.model
        assert isinstance(cn, SD35ControlNet)
        cn.borrow_embedder(main)

    def _to_latent(self, pixels: torch.Tensor, encode: HintEncoder) -> torch.Tensor:
        cn = self.model
        assert isinstance(cn, SD35ControlNet)
        return SD3.process_in(encode(sd35_preprocess(pixels, cn.control_type)).float())

    def _run(
        self, xin: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None, hint: torch.Tensor, y: Any
    ) -> Residuals:
        model = self.model
        assert isinstance(model, SD35ControlNet)
        return model(xin, t, y, hint)  # no text tokens: these ControlNets have no text stream
