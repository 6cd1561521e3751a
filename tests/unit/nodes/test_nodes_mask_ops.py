"""Mask nodes: conversions, solid/invert/crop, compositing operations, feathering, grow/shrink, threshold."""

from __future__ import annotations

import pytest
import torch

from tests.unit.nodes.node_support import builtin

M = builtin("mask")


def test_mask_to_image_and_back():
    mask = torch.rand(2, 3, 4)
    (image,) = M.mask_to_image(mask)
    assert image.shape == (2, 3, 4, 3) and torch.equal(image[..., 1], mask)
    (single,) = M.mask_to_image(torch.rand(3, 4))
    assert single.shape == (1, 3, 4, 3)
    rgba = torch.rand(1, 2, 2, 4)
    for index, channel in enumerate(M.IMAGE_CHANNELS):
        assert torch.equal(M.image_to_mask(rgba, channel)[0], rgba[..., index])
    with pytest.raises(ValueError, match="has 3 channels, so it has no alpha channel"):
        M.image_to_mask(torch.rand(1, 2, 2, 3), "alpha")


def test_image_color_to_mask_exact_8bit_match():
    image = torch.tensor([[[1.0, 128 / 255, 0.0], [1.0, 127 / 255, 0.0]]]).unsqueeze(0)  # (1, 1, 2, 3)
    (mask,) = M.image_color_to_mask(image, 0xFF8000)
    assert mask.tolist() == [[[1.0, 0.0]]]


def test_solid_invert_crop():
    (solid,) = M.solid_mask(0.25, width=5, height=3)
    assert solid.shape == (1, 3, 5) and solid.eq(0.25).all()
    assert M.invert_mask(solid)[0].eq(0.75).all()
    ramp = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6)
    (crop,) = M.crop_mask(ramp, x=1, y=2, width=3, height=10)
    assert torch.equal(crop, ramp[:, 2:6, 1:4])


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("multiply", 0.3 * 0.5),
        ("add", 0.8),
        ("subtract", 0.0),  # 0.3 - 0.5 clamps to 0
        ("and", 0.0),  # round(0.3)=0 and round(0.5)=0 (banker's rounding)
        ("or", 0.0),
        ("xor", 0.0),
    ],
)
def test_mask_composite_operations_in_region_only(operation, expected):
    dest = torch.full((1, 4, 4), 0.3)
    src = torch.full((1, 2, 2), 0.5)
    (out,) = M.mask_composite(dest, src, x=1, y=1, operation=operation)
    assert out[0, 1:3, 1:3].sub(expected).abs().max() < 1e-6
    assert out[0, 0].eq(0.3).all() and out[0, 3].eq(0.3).all() and out[0, :, 0].eq(0.3).all()


def test_mask_composite_logic_and_clipping_at_border():
    dest = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    src = torch.ones(1, 5, 5)
    (out,) = M.mask_composite(dest, src, x=1, y=0, operation="xor")
    assert out.tolist() == [[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]]
    (out,) = M.mask_composite(dest, torch.ones(3, 1, 1), x=0, y=1, operation="add")
    assert out.shape == (3, 2, 3) and out[:, 1, 0].eq(1).all()  # destination tiled to source's batch
    (out,) = M.mask_composite(dest, src, x=10, y=10, operation="add")  # entirely outside
    assert torch.equal(out, dest)


def test_feather_mask_linear_ramps():
    (out,) = M.feather_mask(torch.ones(1, 5, 8), left=4, top=0, right=2, bottom=0)
    torch.testing.assert_close(out[0, 2], torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.5]))
    (out,) = M.feather_mask(torch.ones(1, 4, 2), left=0, top=2, right=0, bottom=100)  # bottom clamped to 4
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.5 * 1.0, 1.0 * 0.75, 0.5, 0.25]))


def test_grow_and_shrink_mask():
    mask = torch.zeros(1, 7, 7)
    mask[0, 3, 3] = 1.0
    (grown,) = M.grow_mask(mask, expand=1, tapered_corners=True)
    assert grown.sum() == 5 and grown[0, 2, 3] == 1 and grown[0, 2, 2] == 0  # a cross
    (grown,) = M.grow_mask(mask, expand=1, tapered_corners=False)
    assert grown.sum() == 9 and grown[0, 2:5, 2:5].eq(1).all()  # a square
    (grown2,) = M.grow_mask(mask, expand=2, tapered_corners=True)
    assert grown2.sum() == 13  # a diamond of radius 2
    (shrunk,) = M.grow_mask(grown, expand=-1, tapered_corners=False)
    assert torch.equal(shrunk, mask)
    # A full mask stays full when eroded: the border repeats instead of reading zeros outside.
    assert M.grow_mask(torch.ones(1, 4, 4), expand=-2, tapered_corners=True)[0].eq(1).all()
    assert torch.equal(M.grow_mask(mask, 0, True)[0], mask)


def test_threshold_is_strictly_greater():
    mask = torch.tensor([[[0.2, 0.5, 0.51]]])
    assert M.threshold_mask(mask, 0.5)[0].tolist() == [[[0.0, 0.0, 1.0]]]
