"""Super-resolution model files: recognise the architecture, scale and channels from a state dict
(both ESRGAN key layouts, Real-ESRGAN compact) and build the model from ``models.upscalers``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.diffusion.models.upscalers import RRDBNet, SRVGGNetCompact

from .io import read_state_dict


@dataclass(frozen=True)
class UpscalerSpec:
    architecture: str  # "ESRGAN" | "SRVGGNetCompact"
    scale: int
    in_nc: int
    out_nc: int
    nf: int
    blocks: int  # RRDB blocks / SRVGG convs
    n_up: int = 0
    unshuffle: int = 1
    growth: int = 32  # RRDB dense-block growth channels (gc)


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Real-ESRGAN releases wrap the weights in "params_ema" / "params"; some trainers prefix "module.".
    for wrap in ("params_ema", "params"):
        if wrap in sd and isinstance(sd[wrap], dict):
            sd = sd[wrap]  # type: ignore[assignment]
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def old_to_new_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ESRGAN key layout -> BasicSR names.

    Old layout (``model`` Sequential): 0 conv_first; 1.sub.i.RDBk.convj.0 the RRDB trunk and 1.sub.{nb}
    conv_body; then an upsampling conv every 3 indices starting at 3 (3, 6[, 9]), conv_hr and conv_last as
    the last two convs."""
    convs = sorted({int(k.split(".")[1]) for k in sd if k.startswith("model.") and k.split(".")[1].isdigit()})
    nb = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("model.1.sub.") and ".RDB" in k)
    top = [c for c in convs if c >= 2 and f"model.{c}.weight" in sd]
    *ups, hr, last = top
    names = {0: "conv_first", hr: "conv_hr", last: "conv_last"}
    for i, c in enumerate(ups):
        names[c] = f"conv_up{i + 1}"
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[1] == "1" and parts[2] == "sub":
            idx = int(parts[3])
            if idx == nb:
                out[f"conv_body.{parts[-1]}"] = v
            else:
                rdb, conv = parts[4].lower(), parts[5]
                out[f"body.{idx}.{rdb}.{conv}.{parts[-1]}"] = v
        else:
            out[f"{names[int(parts[1])]}.{parts[-1]}"] = v
    return out


def detect_upscaler(sd: dict[str, torch.Tensor]) -> tuple[UpscalerSpec, dict[str, torch.Tensor]]:
    """(spec, state dict in the layout of our module). Raises ValueError for unknown architectures."""
    sd = _strip(sd)
    if "model.0.weight" in sd and any(k.startswith("model.1.sub.") for k in sd):
        sd = old_to_new_keys(sd)
    if "conv_first.weight" in sd and "body.0.rdb1.conv1.weight" in sd:
        nb = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.rdb1\.", k)))
        n_up = sum(1 for i in range(1, 6) if f"conv_up{i}.weight" in sd)
        out_nc = int(sd["conv_last.weight"].shape[0])
        first_in = int(sd["conv_first.weight"].shape[1])
        unshuffle = round((first_in / out_nc) ** 0.5)
        if unshuffle * unshuffle * out_nc != first_in or (2**n_up) % unshuffle:
            raise ValueError(
                f"ESRGAN: conv_first takes {first_in} channels and conv_last gives {out_nc}; this "
                "input/output channel combination is not a supported RRDBNet variant"
            )
        spec = UpscalerSpec(
            "ESRGAN", 2**n_up // unshuffle, out_nc, out_nc, int(sd["conv_first.weight"].shape[0]), nb,
            n_up, unshuffle, int(sd["body.0.rdb1.conv1.weight"].shape[0]),
        )  # fmt: skip
        return spec, sd
    if "body.0.weight" in sd and "body.1.weight" in sd and sd["body.1.weight"].ndim == 1:
        idx = sorted(int(k.split(".")[1]) for k in sd if re.match(r"body\.\d+\.weight$", k))
        last = sd[f"body.{idx[-1]}.weight"]
        in_nc = int(sd["body.0.weight"].shape[1])
        nf = int(sd["body.0.weight"].shape[0])
        num_conv = (idx[-1] - 2) // 2
        scale = round((int(last.shape[0]) / in_nc) ** 0.5)
        if scale * scale * in_nc != int(last.shape[0]):
            raise ValueError(
                f"SRVGGNetCompact: the last conv's {last.shape[0]} channels are not in_nc * scale^2"
            )
        return UpscalerSpec("SRVGGNetCompact", scale, in_nc, in_nc, nf, num_conv), sd
    raise ValueError(
        "unsupported upscale model: only ESRGAN/Real-ESRGAN (RRDBNet, old 'model.N' or new 'conv_first' "
        "layout) and Real-ESRGAN compact (SRVGGNetCompact, 'body.N') are implemented; other architectures "
        f"(SwinIR, HAT, DAT, OmniSR...) are not. First keys: {sorted(sd)[:6]}"
    )


def build_from_spec(spec: UpscalerSpec, **fk: Any) -> nn.Module:
    if spec.architecture == "ESRGAN":
        return RRDBNet(
            in_nc=spec.in_nc, out_nc=spec.out_nc, nf=spec.nf, nb=spec.blocks, gc=spec.growth, n_up=spec.n_up,
            unshuffle=spec.unshuffle, **fk,
        )  # fmt: skip
    return SRVGGNetCompact(
        in_nc=spec.in_nc, out_nc=spec.out_nc, nf=spec.nf, num_conv=spec.blocks, scale=spec.scale, **fk
    )


def load_upscaler(sd: dict[str, torch.Tensor]) -> tuple[nn.Module, UpscalerSpec]:
    spec, sd = detect_upscaler(sd)
    model = build_from_spec(spec, device="meta")
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(
            f"{spec.architecture} x{spec.scale}: weights do not fit the detected layout: {e}"
        ) from e
    return model.eval(), spec


def load_upscaler_file(path: str | os.PathLike[str]) -> tuple[nn.Module, UpscalerSpec]:
    """From ``.safetensors`` or a weights-only ``.pth``/``.pt`` (never unpickles objects)."""
    try:
        if os.fspath(path).lower().endswith((".pth", ".pt", ".ckpt", ".bin")):
            # Real-ESRGAN .pth files nest the tensors ({"params_ema": {...}}), which the flat reader
            # rejects; weights_only=True still refuses anything but tensors and plain containers.
            try:
                raw = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - pickle errors come in many types
                raise ValueError(f"cannot read it as a weights-only torch file: {e}") from e
            if not isinstance(raw, dict):
                raise ValueError(f"expected a state dict, found a {type(raw).__name__}")
            return load_upscaler(raw)
        return load_upscaler(read_state_dict(path))
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from e
