"""LoRA extraction from a model difference (ComfyUI's LoraSave, comfy_extras/nodes_lora_extract.py).

The input is a handle whose weights *are* a difference (ModelMergeSubtract / CLIPMergeSubtract output,
`m * (W1 - W2)`). Each 2-D / 4-D weight difference is factored by a truncated SVD into `up @ down` of the
requested rank (Eckart-Young: the best rank-r approximation in the Frobenius norm), the singular values
folded into `up`; both factors are then clamped to [-q, q], q the 0.99 quantile of their entries taken
together (ComfyUI's rule: it trims the few outliers float16 would carry badly). "full_diff" stores the whole difference instead (`.diff`), and `bias_diff` adds the
1-D differences (`.diff` for norm weights, `.diff_b` for biases). Tensors are written in float16.

Key names are ComfyUI's: `diffusion_model.<UNet key>` for the model and `text_encoders.<ComfyUI CLIP key>`
(`clip_l.transformer.text_model.*`) for the text encoder, so ComfyUI's LoraLoader reads the file.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.handles.saving import clip_towers, patched_state_dict

CLAMP_QUANTILE = 0.99
LORA_TYPES = ("standard", "full_diff")


def extract_lora(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with `up @ down` the rank-`rank` SVD approximation of `diff` (out, in[, kh, kw]).

    A 3x3 convolution is factored as its (out, in*kh*kw) matrix: up is (out, r, 1, 1), down (r, in, kh, kw);
    a 1x1 convolution as its (out, in) matrix with 1x1 kernels on both factors."""
    conv = diff.ndim == 4
    out_dim, in_dim = int(diff.shape[0]), int(diff.shape[1])
    rank = min(rank, in_dim, out_dim)
    matrix = diff.float().flatten(start_dim=1) if conv else diff.float()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up = u[:, :rank] @ torch.diag(s[:rank])
    down = vh[:rank, :]
    high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), CLAMP_QUANTILE)
    up, down = up.clamp(-high, high), down.clamp(-high, high)
    if conv:
        kh, kw = int(diff.shape[2]), int(diff.shape[3])
        up = up.reshape(out_dim, rank, 1, 1)
        down = down.reshape(rank, in_dim, kh, kw)
    return up, down


def _half(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().to(torch.float16).cpu()


def lora_from_difference(
    sd: dict[str, torch.Tensor], prefix: str, rank: int, lora_type: str, bias_diff: bool
) -> dict[str, torch.Tensor]:
    """LoRA tensors (float16) for every weight of a difference state dict `sd`, keys under `prefix`."""
    if lora_type not in LORA_TYPES:
        raise ValueError(f"lora_type must be one of {LORA_TYPES}, got {lora_type!r}")
    out: dict[str, torch.Tensor] = {}
    for key, diff in sd.items():
        if not diff.is_floating_point():
            continue
        if key.endswith(".weight"):
            module = prefix + key[: -len(".weight")]
            if lora_type == "full_diff":
                out[module + ".diff"] = _half(diff)
            elif diff.ndim < 2:
                if bias_diff:
                    out[module + ".diff"] = _half(diff)
            else:
                up, down = extract_lora(diff, rank)
                out[module + ".lora_up.weight"] = _half(up)
                out[module + ".lora_down.weight"] = _half(down)
        elif bias_diff and key.endswith(".bias"):
            out[prefix + key[: -len(".bias")] + ".diff_b"] = _half(diff)
    return out


def model_lora(model_diff: Any, rank: int, lora_type: str, bias_diff: bool) -> dict[str, torch.Tensor]:
    return lora_from_difference(
        patched_state_dict(model_diff), "diffusion_model.", rank, lora_type, bias_diff
    )


def comfy_clip_keys(clip: Any) -> dict[str, torch.Tensor]:
    """The text encoder's weights under ComfyUI's CLIP names (`clip_l.transformer.text_model.*`,
    `clip_g.transformer.text_projection.weight`)."""
    out: dict[str, torch.Tensor] = {}
    for tower, sd in clip_towers(clip).items():
        out.update({f"{tower}.transformer.{k}": v for k, v in sd.items()})
    return out


def clip_lora(clip_diff: Any, rank: int, lora_type: str, bias_diff: bool) -> dict[str, torch.Tensor]:
    return lora_from_difference(comfy_clip_keys(clip_diff), "text_encoders.", rank, lora_type, bias_diff)
