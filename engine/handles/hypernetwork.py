"""Hypernetworks (the A1111 / ComfyUI `.pt` format) as attention patches on a MODEL.

A hypernetwork file is a weights-only torch pickle: a dict whose integer keys are attention input widths
(the block width for self-attention, the text width for cross-attention), each holding two state dicts
of small MLPs, one for the keys and one for the values, plus option entries (``activation_func``,
``is_layer_norm``, ``use_dropout``, ``activate_output``, ``last_layer_dropout``). As in ComfyUI
(comfy_extras/nodes_hypernetwork.py), each attention whose key input has a listed width gets
``k + strength * mlp_k(k)`` and ``v + strength * mlp_v(v)`` before its key / value projections, on both
the self- and the cross-attention.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from engine.handles.adapters import AdapterFileError
from engine.handles.model import ModelHandle

__all__ = ["HypernetworkPatch", "apply_hypernetwork", "load_hypernetwork"]

# The activation names the format uses; "swish" is Hardswish in the files' trainers and in ComfyUI.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softsign": nn.Softsign,
    "mish": nn.Mish,
}


class HypernetworkPatch:
    """An "attn1_patch" / "attn2_patch" function: ``(n, k, v, extra) -> (n, k', v')``."""

    def __init__(self, nets: dict[int, tuple[nn.Sequential, nn.Sequential]], strength: float) -> None:
        self.nets = nets
        self.strength = strength

    def __call__(
        self, n: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pair = self.nets.get(int(k.shape[-1]))
        if pair is None:
            return n, k, v
        net_k, net_v = (net.to(device=k.device, dtype=k.dtype) for net in pair)
        return n, k + net_k(k) * self.strength, v + net_v(v) * self.strength

    def to(self, device: Any) -> HypernetworkPatch:
        for net_k, net_v in self.nets.values():
            net_k.to(device)
            net_v.to(device)
        return self


def _read(path: str | os.PathLike[str]) -> dict[Any, Any]:
    name = os.fspath(path)
    try:
        # Weights only: a pickle that names any Python object other than tensors and plain containers is
        # refused, because unpickling it could run arbitrary code.
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise AdapterFileError(
                f"cannot read hypernetwork {name}: not a readable torch file ({first})"
            ) from None
        raise AdapterFileError(
            f"cannot read hypernetwork {name}: it holds Python objects other than tensors, and only "
            "weights-only pickles are loaded (unpickling other objects can run arbitrary code)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AdapterFileError(
            f"cannot read hypernetwork {name}: not a readable torch file ({first})"
        ) from None
    if not isinstance(obj, dict):
        raise AdapterFileError(
            f"cannot read hypernetwork {name}: expected a dict, found {type(obj).__name__}"
        )
    return obj


def _width_keys(sd: dict[Any, Any]) -> list[int]:
    widths = []
    for key in sd:
        try:
            widths.append(int(key))
        except (TypeError, ValueError):
            continue  # option and bookkeeping entries ("activation_func", "name", "step", ...)
    return widths


def _mlp(layers: dict[str, Any], options: dict[str, Any]) -> nn.Sequential:
    """One MLP from its state dict. The ".weight" entries in file order are the linear layers, each
    followed by its LayerNorm's entry when ``is_layer_norm``; "last" and "penultimate" count positions in
    that list (LayerNorm entries included), which decides where activations and dropout go, as in ComfyUI."""
    names = [k[: -len(".weight")] for k in layers if k.endswith(".weight")]
    activation = options["activation_func"]
    modules: list[nn.Module] = []
    i = 0
    while i < len(names):
        last, penultimate = i == len(names) - 1, i == len(names) - 2
        weight, bias = layers[f"{names[i]}.weight"], layers[f"{names[i]}.bias"]
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": bias})
        modules.append(linear)
        if activation != "linear" and (not last or options["activate_output"]):
            modules.append(ACTIVATIONS[activation]())
        if options["is_layer_norm"]:
            i += 1
            ln_weight, ln_bias = layers[f"{names[i]}.weight"], layers[f"{names[i]}.bias"]
            norm = nn.LayerNorm(ln_weight.shape[0])
            norm.load_state_dict({"weight": ln_weight, "bias": ln_bias})
            modules.append(norm)
        if options["use_dropout"] and not last and (not penultimate or options["last_layer_dropout"]):
            modules.append(nn.Dropout(p=0.3))
        i += 1
    # Inference: dropout is the identity (eval mode), so the same inputs always give the same output.
    return nn.Sequential(*modules).eval().requires_grad_(False)


def load_hypernetwork(path: str | os.PathLike[str], strength: float) -> HypernetworkPatch:
    """The patch for the hypernetwork file at `path`; AdapterFileError naming the file if it is not one."""
    name = os.fspath(path)
    sd = _read(path)
    options = {
        "activation_func": sd.get("activation_func", "linear"),
        "is_layer_norm": bool(sd.get("is_layer_norm", False)),
        "use_dropout": bool(sd.get("use_dropout", False)),
        "activate_output": bool(sd.get("activate_output", False)),
        "last_layer_dropout": bool(sd.get("last_layer_dropout", False)),
    }
    if options["activation_func"] not in ACTIVATIONS:
        raise AdapterFileError(
            f"cannot use hypernetwork {name}: unknown activation_func {options['activation_func']!r} "
            f"(known: {', '.join(ACTIVATIONS)})"
        )
    widths = _width_keys(sd)
    if not widths:
        raise AdapterFileError(f"cannot use hypernetwork {name}: no attention-width entries (e.g. 768, 320)")
    nets: dict[int, tuple[nn.Sequential, nn.Sequential]] = {}
    for width in widths:
        entry = sd[width] if width in sd else sd[str(width)]
        try:
            net_k, net_v = (_mlp(entry[index], options) for index in (0, 1))
            probe = torch.zeros(1, width)
            for net in (net_k, net_v):
                if net(probe).shape != probe.shape:
                    raise ValueError(f"its MLP maps width {width} to {net(probe).shape[-1]}")
        except (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError) as e:
            raise AdapterFileError(
                f"cannot use hypernetwork {name}: the entry for width {width} is not a pair of MLP "
                f"state dicts ({type(e).__name__}: {e})"
            ) from None
        nets[width] = (net_k, net_v)
    return HypernetworkPatch(nets, strength)


def apply_hypernetwork(model: ModelHandle, path: str | os.PathLike[str], strength: float) -> ModelHandle:
    """A clone of `model` whose self- and cross-attention key / value inputs go through the hypernetwork
    (ComfyUI sets the same patch on both); `model` itself is unchanged."""
    patch = load_hypernetwork(path, strength)
    patched = model.clone()
    patched.set_model_attn1_patch(patch)
    patched.set_model_attn2_patch(patch)
    return patched
