"""mask/compositing nodes: alpha split/join and the Porter-Duff operators, worked by hand."""

from __future__ import annotations

import pytest
import torch

from tests.unit.nodes.node_support import builtin

CO = builtin("compositing")


def plain(value: float, h: int = 2, w: int = 2, c: int = 3) -> torch.Tensor:
    return torch.full((1, h, w, c), value)


def mask(value: float, h: int = 2, w: int = 2) -> torch.Tensor:
    return torch.full((1, h, w), value)


# Source colour 0.8 with alpha 0.5 (mask 0.5) over an opaque destination of colour 0.4 (mask 0):
# premultiplied s = 0.4, d = 0.4; sa = 0.5, da = 1. Expected (straight colour, mask = 1 - alpha).
CASES = {
    "SRC_OVER": (0.6, 0.0),  # a = 0.5 + 0.5·1, c = 0.4 + 0.5·0.4
    "DST_OVER": (0.4, 0.0),  # a = 1, c = 0.4 + 0·0.4
    "SRC": (0.8, 0.5),
    "DST": (0.4, 0.0),
    "SRC_IN": (0.8, 0.5),  # a = 0.5, c = 0.4·1 -> 0.8
    "DST_IN": (0.4, 0.5),  # a = 0.5, c = 0.4·0.5 -> 0.4
    "SRC_OUT": (0.0, 1.0),  # a = 0
    "DST_OUT": (0.4, 0.5),  # a = 0.5, c = 0.5·0.4 -> 0.4
    "SRC_ATOP": (0.6, 0.0),  # a = 1, c = 1·0.4 + 0.5·0.4
    "DST_ATOP": (0.4, 0.5),  # a = 0.5, c = 0.5·0.4 + 0·0.4 -> 0.4
    "XOR": (0.4, 0.5),  # a = 0 + 0.5, c = 0 + 0.5·0.4 -> 0.4
    "CLEAR": (0.0, 1.0),
    "ADD": (0.8, 0.0),  # a = min(1.5, 1), c = 0.8
    "MULTIPLY": (0.32, 0.5),  # a = 0.5, c = 0.16 -> 0.32
    "SCREEN": (0.64, 0.0),  # a = 1, c = 0.4 + 0.4 - 0.16
    "DARKEN": (0.6, 0.0),  # a = 1, c = 0·0.4 + 0.5·0.4 + min(0.4, 0.4)
    "LIGHTEN": (0.6, 0.0),
    # 2·d = 0.8 < da = 1, so c = 2·s·d = 0.32; a = 1
    "OVERLAY": (0.32, 0.0),
}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_porter_duff_modes_by_hand(mode):
    colour, out_mask = CASES[mode]
    image, alpha = CO.porter_duff_image_composite(plain(0.8), mask(0.5), plain(0.4), mask(0.0), mode)
    torch.testing.assert_close(image, plain(colour))
    torch.testing.assert_close(alpha, mask(out_mask))


def test_porter_duff_lists_every_mode_in_comfy_order():
    assert list(CO.PORTER_DUFF) == sorted(CASES)


def test_porter_duff_resizes_source_to_destination_and_uses_the_shortest_batch():
    source = torch.cat([plain(1.0, 2, 2), plain(0.5, 2, 2)])
    image, alpha = CO.porter_duff_image_composite(
        source, mask(0.0, 2, 2), plain(0.0, 4, 4), mask(0.0, 4, 4), "SRC"
    )
    assert image.shape == (1, 4, 4, 3) and alpha.shape == (1, 4, 4)
    torch.testing.assert_close(image, plain(1.0, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        CO.porter_duff_image_composite(plain(1.0, c=4), mask(0.0), plain(0.0), mask(0.0), "SRC")


def test_split_and_join_alpha_round_trip():
    rgba = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    rgb, inverted = CO.split_image_with_alpha(rgba)
    assert torch.equal(rgb, rgba[..., :3]) and torch.equal(inverted, 1.0 - rgba[..., 3])
    (joined,) = CO.join_image_with_alpha(rgb, inverted)
    torch.testing.assert_close(joined, rgba)
    rgb_only, no_mask = CO.split_image_with_alpha(rgba[..., :3])
    assert no_mask.abs().sum() == 0 and rgb_only.shape == (2, 3, 4, 3)


def test_join_resizes_the_mask_and_takes_the_shorter_batch():
    (joined,) = CO.join_image_with_alpha(plain(0.3, 4, 4), mask(0.25, 2, 2))
    assert joined.shape == (1, 4, 4, 4)
    torch.testing.assert_close(joined[..., 3], torch.full((1, 4, 4), 0.75))
