"""The GLIGEN socket value and GLIGENTextBoxApply's conditioning (engine.diffusion.models.gligen)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from engine.diffusion.checkpoints.io import CheckpointError, read_state_dict
from engine.diffusion.models.gligen import Gligen, build_gligen
from engine.handles.comfy_surface.clip_vae import TOWER_NAMES

# Box coordinates are stored in latent pixels of an 8x VAE, whatever the model (ComfyUI: pixels // 8).
_BOX_DIVISOR = 8


@dataclass
class GligenHandle:
    """A loaded GLIGEN model (float32, like the ControlNets: moved to the sampling device on use).
    ``model`` is ComfyUI's name for the module behind a ModelPatcher."""

    model: Gligen
    name: str

    def __repr__(self) -> str:
        return f"GligenHandle({self.name!r}, fusers={len(self.model.module_list)})"


def load_gligen(path: str | os.PathLike[str]) -> GligenHandle:
    """A GLIGEN file from models/gligen; CheckpointError naming the file when it is not one."""
    p = os.fspath(path)
    sd = read_state_dict(p, dtype=torch.float32)
    try:
        model = build_gligen(sd)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(p, f"cannot build the GLIGEN model: {e}") from None
    return GligenHandle(model, os.path.basename(p))


def unprojected_pooled(clip: Any, text: str) -> torch.Tensor:
    """The text's pooled CLIP vector without the text projection (ComfyUI's ``return_pooled=
    "unprojected"``: the final-norm state at the first end token) of the family's first tower, (1, width).
    GLIGEN embeds its phrases this way."""
    enc = clip.encoder
    spec = enc.specs[0]
    tokens = clip.tokenize(text)
    chunks = [[(e[0], float(e[1])) for e in chunk] for chunk in tokens[TOWER_NAMES.get(spec.key, spec.key)]]
    pooled_spec = dataclasses.replace(spec, pooled=True, projected_pooled=False)
    with clip.use(), torch.no_grad():
        _, pooled = enc._encode_tower(pooled_spec, chunks, clip_skip=clip.clip_skip, vectors={})
    return pooled.float().cpu()


def gligen_textbox(
    conditioning: Any, clip: Any, gligen: GligenHandle, text: str, width: int, height: int, x: int, y: int
) -> list[list[Any]]:
    """Copies of the entries with the box appended to their "gligen" position list (ComfyUI's
    GLIGENTextBoxApply: ``(pooled, height // 8, width // 8, y // 8, x // 8)``)."""
    pooled = unprojected_pooled(clip, text)
    box = (pooled, height // _BOX_DIVISOR, width // _BOX_DIVISOR, y // _BOX_DIVISOR, x // _BOX_DIVISOR)
    out = []
    for entry in conditioning:
        opts = dict(entry[1])
        previous = list(opts["gligen"][2]) if "gligen" in opts else []
        opts["gligen"] = ("position", gligen, [*previous, box])
        out.append([entry[0], opts])
    return out
