"""A ControlNet / T2I-Adapter bound to a control image, strength and step range: the object that
ControlNetApply-style nodes put under a CONDITIONING entry's ``"control"`` key.

The sampler's guidance calls ``get_control(x, sigma, context, y)`` with the VE-form noisy latent; this
object scales the input and converts sigma to a timestep with the model sampling it was given
(``pre_run``), or with the SD discrete schedule shared by SD1.x, SD2.x and SDXL when none was given.
Several controls chain through ``previous``: their residuals are summed position by position, as
ComfyUI's ``control_merge`` does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete

from .controlnet import ControlNetModel
from .t2i_adapter import T2IAdapter

Residuals = dict[str, list[torch.Tensor | None]]


def fit_hint(hint: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) control image -> (B, C, height, width): centre crop to the target aspect ratio,
    then nearest-exact resize (ComfyUI's ``common_upscale(..., "nearest-exact", "center")``)."""
    _, _, h, w = hint.shape
    if (h, w) == (height, width):
        return hint
    src, dst = w / h, width / height
    if src > dst:  # too wide
        nw = round(h * dst)
        x0 = (w - nw) // 2
        hint = hint[:, :, :, x0 : x0 + nw]
    elif src < dst:
        nh = round(w / dst)
        y0 = (h - nh) // 2
        hint = hint[:, :, y0 : y0 + nh, :]
    return F.interpolate(hint, size=(height, width), mode="nearest-exact")


def _batch(t: torch.Tensor, b: int) -> torch.Tensor:
    if t.shape[0] == b:
        return t
    reps = -(-b // t.shape[0])
    return t.repeat((reps,) + (1,) * (t.ndim - 1))[:b]


class ControlApplication:
    """One applied control model (``ControlNetModel`` or ``T2IAdapter``) with its settings."""

    def __init__(
        self,
        model: ControlNetModel | T2IAdapter,
        hint: torch.Tensor,
        *,
        strength: float = 1.0,
        start_percent: float = 0.0,
        end_percent: float = 1.0,
        previous: ControlApplication | None = None,
        model_sampling: Any = None,
    ) -> None:
        if hint.ndim != 4:
            raise ValueError(f"control hint must be (B, C, H, W); got shape {tuple(hint.shape)}")
        self.model = model
        self.hint = hint
        self.strength = float(strength)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.previous = previous
        self.model_sampling = model_sampling
        self._adapter_cache: tuple[tuple[Any, ...], Residuals] | None = None

    def pre_run(self, model_sampling: Any) -> None:
        """Bind the sampled model's noise schedule (for this control and those it chains to)."""
        node: ControlApplication | None = self
        while node is not None:
            node.model_sampling = model_sampling
            node = node.previous

    def bind_model(self, model: Any) -> None:
        """Show every control of the chain the model being sampled (a ``DiffusionModel``), for those that
        take weights from it (Stability's SD3.5 ControlNets borrow its patch embedding)."""
        for node in self.chain():
            node._bind(model)

    def _bind(self, model: Any) -> None:
        """Nothing to take from the sampled model (the default)."""

    def chain(self) -> list[ControlApplication]:
        out: list[ControlApplication] = []
        node: ControlApplication | None = self
        while node is not None:
            out.append(node)
            node = node.previous
        return out

    def _sampling(self) -> Any:
        if self.model_sampling is None:
            # eps and v share calculate_input and the timestep mapping, so "eps" is right for both.
            self.model_sampling = ModelSamplingDiscrete("eps")
        return self.model_sampling

    def _active(self, sigma: float) -> bool:
        ms = self._sampling()
        hi = ms.percent_to_sigma(self.start_percent)
        lo = ms.percent_to_sigma(self.end_percent)
        return lo <= sigma <= hi

    def _own(
        self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor | None, y: torch.Tensor | None
    ) -> Residuals:
        p = next(self.model.parameters())
        dtype, device = p.dtype, p.device
        b, _, h, w = x.shape
        if isinstance(self.model, T2IAdapter):
            key = (b, h, w, dtype, device)
            if self._adapter_cache is None or self._adapter_cache[0] != key:
                hint = _batch(fit_hint(self.hint.float(), h * 8, w * 8), b).to(device, dtype)
                self._adapter_cache = (key, self.model(hint))
            raw: Residuals = self._adapter_cache[1]
        else:
            ms = self._sampling()
            sig = sigma.reshape(-1)
            xin = ms.calculate_input(sig, x)
            t = ms.model_timestep(sig).float()
            hint = _batch(fit_hint(self.hint.float(), h * 8, w * 8), b).to(device, dtype)
            raw = self.model(  # type: ignore[assignment]
                xin.to(device, dtype),
                t.to(device),
                None if context is None else context.to(device, dtype),
                hint,
                None if y is None else y.to(device, dtype),
            )
        out: Residuals = {}
        for k, lst in raw.items():
            out[k] = [None if r is None else (r * self.strength).to(x.device, x.dtype) for r in lst]
        return out

    def get_control(
        self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor | None, y: torch.Tensor | None
    ) -> Residuals | None:
        prev = self.previous.get_control(x, sigma, context, y) if self.previous is not None else None
        if self.strength == 0.0 or not self._active(float(sigma.reshape(-1)[0])):
            return prev
        own = self._own(x, sigma, context, y)
        if prev is None:
            return own
        return merge_residuals(own, prev)


def merge_residuals(a: Residuals, b: Residuals) -> Residuals:
    """Position-wise sum of two residual dicts (lists may differ in length; None means nothing)."""
    out: Residuals = {}
    for key in set(a) | set(b):
        la, lb = a.get(key, []), b.get(key, [])
        merged: list[torch.Tensor | None] = []
        for i in range(max(len(la), len(lb))):
            va = la[i] if i < len(la) else None
            vb = lb[i] if i < len(lb) else None
            merged.append(vb if va is None else va if vb is None else va + vb)
        out[key] = merged
    return out
