"""Seeded random weights for parity tests of the transformer families (MMDiT, Flux, T5, 16-channel VAE)."""

from __future__ import annotations

import torch


def randomize_(model: torch.nn.Module, seed: int, *, unit: tuple[str, ...] = ()) -> None:
    """Give every parameter seeded values that make a swapped or misnamed key visible in the output.

    1-D tensors: norm scales (``*weight``, ``*scale``) around 1, biases around 0, both perturbed by 0.2.
    Matrices and kernels: unit Gaussians over sqrt(fan-in), so activations keep their size through depth.
    Parameters whose name contains one of ``unit`` (embeddings, position grids) get plain unit Gaussians.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if any(u in name for u in unit):
                p.copy_(noise)
            elif p.ndim == 1:
                p.copy_((1.0 if name.endswith(("weight", "scale")) else 0.0) + 0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
