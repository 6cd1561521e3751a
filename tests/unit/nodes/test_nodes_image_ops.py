"""Image transform nodes on small tensors: sizes, crops, padding masks, blend formulas, filters."""

from __future__ import annotations

import pytest
import torch

from tests.unit.nodes.node_support import builtin

IM = builtin("image")


def grid(h: int = 4, w: int = 6, batch: int = 1) -> torch.Tensor:
    """(B, H, W, 3) with red = x / (w - 1), green = y / (h - 1), blue = batch index / 10."""
    xs = torch.linspace(0, 1, w)[None, :].expand(h, w)
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    frames = [torch.stack([xs, ys, torch.full((h, w), b / 10)], dim=-1) for b in range(batch)]
    return torch.stack(frames)


@pytest.mark.parametrize("method", IM.UPSCALE_METHODS_IMAGE)
def test_image_scale_every_method_gives_size_and_range(method):
    image = grid(8, 12, batch=2)
    (out,) = IM.image_scale(image, method, 24, 16, "disabled")
    assert out.shape == (2, 16, 24, 3)
    assert out.min() >= -0.05 and out.max() <= 1.05  # bicubic may overshoot slightly, never wildly
    # Frames stay separate: blue still encodes the batch index.
    assert out[1, ..., 2].mean() == pytest.approx(0.1, abs=0.01)


def test_image_scale_zero_keeps_aspect_and_center_crop():
    image = grid(10, 20)
    assert IM.image_scale(image, "bilinear", 0, 0, "disabled")[0] is image
    assert IM.image_scale(image, "bilinear", 0, 5, "disabled")[0].shape == (1, 5, 10, 3)
    assert IM.image_scale(image, "bilinear", 40, 0, "disabled")[0].shape == (1, 20, 40, 3)
    (out,) = IM.image_scale(image, "nearest-exact", 10, 10, "center")
    torch.testing.assert_close(out, image[:, :, 5:15, :])  # 20 wide -> middle 10 columns


def test_lanczos_goes_through_pillow_and_keeps_flat_colour():
    image = torch.full((1, 8, 8, 3), 0.6)
    (out,) = IM.image_scale(image, "lanczos", 13, 5, "disabled")
    assert out.shape == (1, 5, 13, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, 153 / 255), atol=1 / 255, rtol=0)


def test_image_scale_by_and_total_pixels():
    image = grid(8, 16)
    assert IM.image_scale_by(image, "area", 0.5)[0].shape == (1, 4, 8, 3)
    assert IM.image_scale_by(image, "bicubic", 1.25)[0].shape == (1, 10, 20, 3)
    (out,) = IM.image_scale_to_total_pixels(image, "bilinear", 0.001, 1)  # 1048.576 px at 2:1
    assert out.shape == (1, 23, 46, 3)
    (out,) = IM.image_scale_to_total_pixels(image, "bilinear", 0.001, 8)
    assert out.shape == (1, 24, 48, 3)


def test_invert():
    image = grid()
    torch.testing.assert_close(IM.image_invert(image)[0], 1 - image)


def test_image_batch_resizes_second_to_first():
    a, b = grid(4, 4), torch.ones(2, 8, 16, 3)
    (out,) = IM.image_batch(a, b)
    assert out.shape == (3, 4, 4, 3) and torch.equal(out[0], a[0]) and out[1:].eq(1).all()
    with pytest.raises(ValueError, match="image1 has 3 channels but image2 has 4"):
        IM.image_batch(a, torch.ones(1, 4, 4, 4))


def test_pad_for_outpaint_places_image_and_masks_border():
    image = torch.zeros(1, 4, 6, 3)
    padded, mask = IM.image_pad_for_outpaint(image, left=2, top=0, right=0, bottom=3, feathering=0)
    assert padded.shape == (1, 7, 8, 3) and mask.shape == (1, 7, 8)
    assert padded[0, :4, 2:].eq(0).all() and padded[0, :, :2].eq(0.5).all() and padded[0, 4:].eq(0.5).all()
    assert mask[0, :4, 2:].eq(0).all() and mask[0, :, :2].eq(1).all() and mask[0, 4:].eq(1).all()


def test_pad_for_outpaint_feathering_is_quadratic_from_padded_edges_only():
    image = torch.zeros(1, 10, 10, 3)
    _, mask = IM.image_pad_for_outpaint(image, left=0, top=0, right=4, bottom=0, feathering=4)
    inner = mask[0, :, :10]
    # Distance to the right edge d = 10 - col for cols 7..9 -> ((4 - d) / 4)^2.
    row = inner[5]
    torch.testing.assert_close(row[6:], torch.tensor([0.0, (1 / 4) ** 2, (2 / 4) ** 2, (3 / 4) ** 2]))
    assert row[:6].eq(0).all()
    assert torch.equal(inner[0], inner[9])  # top/bottom were not padded: no feather there
    # Feathering too large for the image is ignored.
    _, mask = IM.image_pad_for_outpaint(image, left=2, top=2, right=2, bottom=2, feathering=5)
    assert mask[0, 2:12, 2:12].eq(0).all()


def test_image_crop_window_and_clamp():
    image = grid(10, 10)
    (out,) = IM.image_crop(image, width=3, height=2, x=4, y=5)
    torch.testing.assert_close(out, image[:, 5:7, 4:7, :])
    (out,) = IM.image_crop(image, width=512, height=512, x=50, y=50)
    assert out.shape == (1, 1, 1, 3) and torch.equal(out[0, 0, 0], image[0, 9, 9])


def test_image_blend_modes_match_formulas():
    a = torch.tensor([0.2, 0.8]).reshape(1, 1, 2, 1).expand(1, 1, 2, 3)
    b = torch.tensor([0.6, 0.3]).reshape(1, 1, 2, 1).expand(1, 1, 2, 3)
    expected = {
        "normal": [0.6, 0.3],
        "multiply": [0.12, 0.24],
        "screen": [1 - 0.8 * 0.4, 1 - 0.2 * 0.7],
        "overlay": [2 * 0.2 * 0.6, 1 - 2 * 0.2 * 0.7],
        "difference": [0.0, 0.5],  # 0.2 - 0.6 clamps to 0
    }
    for mode, values in expected.items():
        (out,) = IM.image_blend(a, b, 1.0, mode)
        torch.testing.assert_close(out[0, 0, :, 0], torch.tensor(values), msg=mode)
    # soft light, top > 0.5 over base 0.2 (<= 0.25 branch of D): base + (2t - 1) * (D(base) - base)
    d = ((16 * 0.2 - 12) * 0.2 + 4) * 0.2
    (out,) = IM.image_blend(a, b, 1.0, "soft_light")
    assert out[0, 0, 0, 0].item() == pytest.approx(0.2 + 0.2 * (d - 0.2), abs=1e-6)
    (out,) = IM.image_blend(a, b, 0.25, "normal")
    torch.testing.assert_close(
        out[0, 0, :, 0], torch.tensor([0.75 * 0.2 + 0.25 * 0.6, 0.75 * 0.8 + 0.25 * 0.3])
    )
    (out,) = IM.image_blend(a, torch.ones(1, 4, 4, 3), 1.0, "normal")  # resized second image
    assert out.shape == a.shape and out.eq(1).all()


def test_blur_preserves_flat_areas_and_spreads_a_point():
    flat = torch.full((1, 5, 5, 3), 0.4)
    torch.testing.assert_close(IM.image_blur(flat, 2, 1.0)[0], flat)
    point = torch.zeros(1, 9, 9, 3)
    point[0, 4, 4] = 1.0
    (out,) = IM.image_blur(point, 1, 1.0)
    assert out[0, 4, 4, 0] < 1.0 and out[0, 3, 4, 0] > 0 and out[0, 2, 4, 0] == 0
    assert out[..., 0].sum().item() == pytest.approx(1.0, abs=1e-5)  # energy kept away from borders
    (wide,) = IM.image_blur(torch.rand(1, 3, 3, 3), 5, 1.0)  # radius beyond the image still works
    assert wide.shape == (1, 3, 3, 3)


def test_sharpen_keeps_flat_areas_and_raises_contrast_at_edges():
    flat = torch.full((1, 5, 5, 3), 0.4)
    torch.testing.assert_close(IM.image_sharpen(flat, 1, 1.0, 1.0)[0], flat)
    step = torch.zeros(1, 6, 6, 3)
    step[:, :, 3:] = 0.5
    (out,) = IM.image_sharpen(step, 1, 1.0, 0.5)
    assert out[0, 2, 3, 0] > 0.5 and out[0, 2, 2, 0] == 0.0  # overshoot, clamped at 0 below
    assert out.min() >= 0 and out.max() <= 1


def test_empty_image_colour():
    (out,) = IM.empty_image(width=3, height=2, batch_size=2, color=0xFF8000)
    assert out.shape == (2, 2, 3, 3)
    torch.testing.assert_close(out[1, 1, 2], torch.tensor([1.0, 128 / 255, 0.0]))


def test_image_composite_masked_places_and_weights():
    dest = torch.zeros(1, 4, 4, 3)
    src = torch.ones(1, 2, 2, 3)
    (out,) = IM.image_composite_masked(dest, src, 1, 2, False)
    assert out[0, 2:4, 1:3].eq(1).all() and out.sum() == 4 * 3
    mask = torch.tensor([[[0.5, 0.0], [0.0, 1.0]]])
    (out,) = IM.image_composite_masked(dest, src, 3, 3, False, mask)  # only the top-left source pixel fits
    assert out[0, 3, 3, 0] == 0.5 and out.sum() == 0.5 * 3
    with pytest.raises(ValueError, match="destination has 3 channels but source has 4"):
        IM.image_composite_masked(dest, torch.ones(1, 2, 2, 4), 0, 0, False)
