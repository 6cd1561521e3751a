"""image/transform, image/batch and image/postprocessing nodes against hand-worked results."""

from __future__ import annotations

import pytest
import torch

from tests.unit.nodes.node_support import builtin

IT = builtin("image_transform")


def grid(h: int, w: int, c: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.arange(batch * h * w * c, dtype=torch.float32).reshape(batch, h, w, c) / (batch * h * w * c)


def test_flip_and_rotate():
    image = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]]).unsqueeze(0)  # rows abc / def
    (vertical,) = IT.image_flip(image, "x-axis: vertically")
    assert vertical[0, :, :, 0].tolist() == [[4, 5, 6], [1, 2, 3]]
    (horizontal,) = IT.image_flip(image, "y-axis: horizontally")
    assert horizontal[0, :, :, 0].tolist() == [[3, 2, 1], [6, 5, 4]]
    (clockwise,) = IT.image_rotate(image, "90 degrees")
    assert clockwise[0, :, :, 0].tolist() == [[4, 1], [5, 2], [6, 3]]
    (half,) = IT.image_rotate(image, "180 degrees")
    assert half[0, :, :, 0].tolist() == [[6, 5, 4], [3, 2, 1]]
    (three,) = IT.image_rotate(image, "270 degrees")
    assert three[0, :, :, 0].tolist() == [[3, 6], [2, 5], [1, 4]]
    assert IT.image_rotate(image, "none")[0].equal(image)


def test_stitch_matching_size_and_spacing():
    image1 = torch.zeros(2, 4, 4, 3)
    image2 = torch.ones(1, 2, 4, 3)  # aspect 2: scaled to 4 x 8 beside image1
    (out,) = IT.image_stitch(image1, "right", True, 3, "red", image2)
    assert out.shape == (2, 4, 4 + 4 + 8, 3)  # odd spacing 3 becomes 4
    assert out[:, :, 4:8].reshape(-1, 3).unique(dim=0).tolist() == [[1.0, 0.0, 0.0]]
    assert out[1, :, 8:].min() > 0.99  # the batch of one repeats its image
    (left,) = IT.image_stitch(image1, "left", True, 0, "white", image2)
    assert left.shape == (2, 4, 12, 3) and left[:, :, :8].min() > 0.99 and left[:, :, 8:].max() == 0
    assert IT.image_stitch(image1, "up", True, 0, "white")[0] is image1


def test_stitch_without_matching_pads_centred_and_adds_alpha():
    image1 = torch.zeros(1, 2, 2, 3)
    image2 = torch.full((1, 3, 5, 4), 0.5)  # wider, RGBA
    (out,) = IT.image_stitch(image1, "down", False, 0, "white", image2)
    assert out.shape == (1, 5, 5, 4)
    # image1 is padded from width 2 to 5 (1 column before, 2 after) with white, gets an opaque alpha.
    assert out[0, :2, 0, :3].tolist() == [[1.0] * 3] * 2 and out[0, :2, 1:3, :3].max() == 0
    assert out[0, :2, 3:, :3].min() == 1 and out[0, :2, :, 3].min() == 1
    (coloured,) = IT.image_stitch(image1, "down", False, 0, "green", image2)
    assert coloured[0, :2, 0, :3].max() == 0  # a coloured gap pads with black


def test_size_batch_slicing_and_repeat():
    image = grid(3, 5, 3, batch=4)
    out = IT.get_image_size(image)
    assert out.values == (5, 3, 4) and "width: 5, height: 3" in out.ui["text"][0]
    assert torch.equal(IT.image_from_batch(image, 1, 2)[0], image[1:3])
    assert torch.equal(IT.image_from_batch(image, 9, 5)[0], image[3:4])  # clamped
    pair = torch.stack([torch.zeros(1, 1, 1), torch.ones(1, 1, 1)])
    (repeated,) = IT.repeat_image_batch(pair, 3)
    assert repeated.flatten().tolist() == [0, 1, 0, 1, 0, 1]


def test_add_noise_is_comfyui_draw_and_clipped():
    image = torch.full((1, 4, 4, 3), 0.5)
    (out,) = IT.image_add_noise(image, 42, 0.3)
    with torch.random.fork_rng():  # ComfyUI seeds the global CPU generator
        torch.manual_seed(42)
        expected = torch.clamp(image + 0.3 * torch.randn(image.size()), 0, 1)
    assert torch.equal(out, expected) and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, IT.image_add_noise(image, 43, 0.3)[0])


def test_resize_and_pad_centres_on_the_canvas():
    image = torch.full((1, 2, 4, 3), 0.25)  # 4 wide, 2 high -> scale 2 into 8 x 8
    (out,) = IT.resize_and_pad_image(image, 8, 8, "white", "nearest-exact")
    assert out.shape == (1, 8, 8, 3)
    assert out[0, :2].min() == 1 and out[0, 6:].min() == 1  # (8 - 4) // 2 rows above and below
    assert torch.all(out[0, 2:6] == 0.25)
    (black,) = IT.resize_and_pad_image(image, 6, 3, "black", "area")  # scale 1.5 -> 6 x 3, no padding
    assert black.shape == (1, 3, 6, 3) and torch.allclose(black, torch.tensor(0.25))


@pytest.mark.parametrize(
    ("shape", "size"), [((1, 2, 4, 3), (4, 8)), ((1, 6, 3, 3), (8, 4)), ((1, 5, 5, 3), (8, 8))]
)
def test_scale_to_max_dimension(shape, size):
    (out,) = IT.image_scale_to_max_dimension(torch.rand(shape), "bilinear", 8)
    assert tuple(out.shape[1:3]) == size


def test_bayer_matrices():
    assert IT.bayer_matrix(2).tolist() == [[-0.375, 0.125], [0.375, -0.125]]
    for order in (4, 8, 16):
        values = sorted(IT.bayer_matrix(order).flatten().tolist())
        n = order * order  # a permutation of the centred thresholds (2k + 1 - n) / 2n
        assert values == pytest.approx([(2 * k + 1 - n) / (2 * n) for k in range(n)])


def test_quantize_keeps_a_two_colour_image_and_reduces_colours():
    image = torch.zeros(1, 4, 4, 3)
    image[0, :, :2] = torch.tensor([1.0, 0.0, 0.0])
    image[0, :, 2:] = torch.tensor([0.0, 0.0, 1.0])
    for dither in ("none", "floyd-steinberg", "bayer-2"):
        (out,) = IT.image_quantize(image, 2, dither)
        assert torch.equal(out, image), dither
    gradient = grid(16, 16, 3)
    (few,) = IT.image_quantize(gradient, 4, "bayer-4")
    assert len(few.reshape(-1, 3).unique(dim=0)) <= 4


def impulse(size: int = 5, at: int = 2) -> torch.Tensor:
    image = torch.zeros(1, size, size, 1)
    image[0, at, at, 0] = 1.0
    return image


def test_morphology_by_hand():
    dot = impulse()
    block = torch.zeros(1, 5, 5, 1)
    block[0, 1:4, 1:4] = 1.0
    assert torch.equal(IT.morphology(dot, "dilate", 3), block)
    assert torch.equal(IT.morphology(block, "erode", 3), dot)
    assert torch.equal(IT.morphology(dot, "gradient", 3), block)  # dilate - erode (erode is 0)
    assert torch.equal(IT.morphology(dot, "open", 3), torch.zeros_like(dot))
    assert torch.equal(IT.morphology(dot, "top_hat", 3), dot)
    hole = 1.0 - dot
    assert torch.equal(IT.morphology(hole, "close", 3), torch.ones_like(dot))
    assert torch.equal(IT.morphology(hole, "bottom_hat", 3), dot)
    # The border does not erode: outside pixels never win (geodesic).
    assert torch.equal(IT.morphology(torch.ones(1, 4, 4, 3), "erode", 5), torch.ones(1, 4, 4, 3))


def test_morphology_even_kernel_is_anchored_at_half_the_size():
    (out,) = IT.image_morphology(impulse(6, 2), "dilate", 4)
    # Output i covers inputs i-2 .. i+1, so the dot at 2 reaches rows/columns 1..4.
    expected = torch.zeros(1, 6, 6, 1)
    expected[0, 1:5, 1:5] = 1.0
    assert torch.equal(out, expected)


def test_rgb_yuv_by_hand_and_round_trip():
    red = torch.zeros(1, 1, 1, 3)
    red[..., 0] = 1.0
    y, u, v = IT.image_rgb_to_yuv(red)
    assert y.shape == red.shape and y.flatten().tolist() == pytest.approx([0.299] * 3)
    assert u[0, 0, 0, 0].item() == pytest.approx(-0.299 * 0.564 + 0.5)
    assert v[0, 0, 0, 0].item() == pytest.approx(0.701 * 0.713 + 0.5)
    image = grid(4, 4, 3)
    (back,) = IT.image_yuv_to_rgb(*IT.image_rgb_to_yuv(image))
    torch.testing.assert_close(back, image, atol=2e-3, rtol=0)  # the rounded coefficients invert to ~1e-3
