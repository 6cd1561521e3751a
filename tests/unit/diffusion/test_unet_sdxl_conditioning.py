"""SDXL size/crop/aesthetic conditioning vector layout (SDXL paper §2.2; sgm conditioner order)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.diffusion.models.sdxl_conditioning import sdxl_adm, sdxl_refiner_adm


def block(y: torch.Tensor, pooled_dim: int, index: int) -> torch.Tensor:
    start = pooled_dim + 256 * index
    return y[:, start : start + 256]


def expected_embedding(value: float) -> torch.Tensor:
    # cos half first, then sin; frequencies 10000**(-i/128)
    freqs = [math.exp(-math.log(10000.0) * i / 128) for i in range(128)]
    return torch.tensor([math.cos(value * f) for f in freqs] + [math.sin(value * f) for f in freqs])


def test_sdxl_base_vector_order_and_values() -> None:
    pooled = torch.randn(3, 1280)
    y = sdxl_adm(pooled, width=1024, height=768, crop_w=16, crop_h=48, target_width=896, target_height=640)
    assert y.shape == (3, 2816)
    assert torch.equal(y[:, :1280], pooled)
    for index, value in enumerate([768, 1024, 48, 16, 640, 896]):
        got = block(y, 1280, index)
        assert torch.allclose(got, expected_embedding(value).expand(3, -1), atol=1e-4), index


def test_sdxl_refiner_vector_order_and_values() -> None:
    pooled = torch.zeros(1, 1280, dtype=torch.float16)
    y = sdxl_refiner_adm(pooled, width=1024, height=512, crop_w=0, crop_h=8, aesthetic_score=6.0)
    assert y.shape == (1, 2560)
    assert y.dtype == torch.float16
    for index, value in enumerate([512, 1024, 8, 0, 6.0]):
        assert torch.allclose(block(y, 1280, index).float(), expected_embedding(value)[None], atol=2e-3), (
            index
        )


def test_pooled_must_be_2d() -> None:
    with pytest.raises(ValueError, match="batch, dim"):
        sdxl_adm(torch.zeros(1280), width=1, height=1, crop_w=0, crop_h=0, target_width=1, target_height=1)
