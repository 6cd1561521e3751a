"""Preprocessors on synthetic images whose answer is known."""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.preprocess import canny, canny_edges, image_to_mask, invert, threshold


def square(size=48, lo=12, hi=36):
    img = torch.zeros(1, size, size, 3)
    img[:, lo:hi, lo:hi, :] = 1.0
    return img


def test_canny_square_edges_on_border_only():
    e = canny_edges(square(), 0.2, 0.5)[0, 0]
    assert e.shape == (48, 48)
    assert e[14:34, 14:34].sum() == 0  # nothing inside the square
    assert e[:9, :].sum() == 0 and e[40:, :].sum() == 0  # nothing far outside
    # Every side of the square has a continuous edge within a pixel of its boundary.
    for rows in (e[10:14, 14:34], e[34:38, 14:34]):
        assert bool((rows.amax(0) > 0).all())
    for cols in (e[14:34, 10:14], e[14:34, 34:38]):
        assert bool((cols.amax(1) > 0).all())
    # Thin: non-maximum suppression leaves at most 2 pixels across an edge.
    assert int(e[20, :24].sum()) <= 2
    out = canny(square(), 0.2, 0.5)
    assert out.shape == (1, 48, 48, 3) and torch.equal(out[..., 0], out[..., 2])


def test_canny_hysteresis_keeps_weak_edges_connected_to_strong():
    # A vertical edge whose contrast fades from 1.0 (top) to 0.3 (bottom); unnormalised Sobel on a
    # sigma-1 blur gives a magnitude of about 3.2 x contrast, so only the top rows pass high = 2.4.
    img = torch.ones(1, 40, 40, 3)
    img[:, :, :20, :] = torch.linspace(0.0, 0.7, 40).view(1, 40, 1, 1)
    e = canny_edges(img, 0.3, 2.4)[0, 0]
    assert e[:, 17:23].amax(1).min() > 0  # the whole line, weak part kept through its connection
    faint = img.clone()
    faint[:, :, :20, :] = torch.linspace(0.5, 0.7, 40).view(1, 40, 1, 1)  # contrast 0.5..0.3: all weak
    assert canny_edges(faint, 0.3, 2.4).sum() == 0  # weak edges alone are dropped
    assert canny_edges(faint, 0.3, 1.2).sum() > 0
    with pytest.raises(ValueError):
        canny_edges(img, 0.9, 0.1)
    assert canny_edges(torch.full((1, 16, 16, 3), 0.5), 0.1, 0.2).sum() == 0


def test_threshold_invert_mask():
    img = torch.linspace(0, 1, 10).view(1, 1, 10, 1).expand(1, 2, 10, 3).contiguous()
    t = threshold(img, 0.5)
    assert torch.equal(t[0, 0, :, 0], (torch.linspace(0, 1, 10) >= 0.5).float())
    assert torch.allclose(invert(img), 1 - img)
    m = image_to_mask(torch.cat([img, torch.zeros(1, 2, 10, 1)], -1), "alpha")
    assert m.shape == (1, 2, 10) and m.sum() == 0
    assert torch.allclose(image_to_mask(img, "green"), img[..., 1])
    with pytest.raises(ValueError, match="no 'alpha'"):
        image_to_mask(img, "alpha")
