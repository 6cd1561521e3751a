"""Latent nodes (no model needed): shapes, placement, batches, masks, and that inputs stay untouched."""

from __future__ import annotations

import pytest
import torch

from tests.unit.nodes.node_support import builtin

L = builtin("latent")


def ramp_latent(batch: int = 1, h: int = 4, w: int = 6, channels: int = 4) -> dict:
    values = torch.arange(batch * channels * h * w, dtype=torch.float32).reshape(batch, channels, h, w)
    return {"samples": values}


def test_empty_latent_shape_and_zeros():
    (out,) = L.empty_latent_image(width=520, height=256, batch_size=3)
    assert out["samples"].shape == (3, 4, 32, 65) and not out["samples"].any()
    assert set(out) == {"samples"}


def test_latent_upscale_sizes_and_aspect():
    latent = ramp_latent(h=8, w=16)  # 128x64 pixels
    (same,) = L.latent_upscale(latent, "nearest-exact", 0, 0, "disabled")
    assert same is latent
    (out,) = L.latent_upscale(latent, "bilinear", 256, 128, "disabled")
    assert out["samples"].shape == (1, 4, 16, 32)
    (out,) = L.latent_upscale(latent, "nearest-exact", 0, 256, "disabled")  # width from aspect 2:1
    assert out["samples"].shape == (1, 4, 32, 64)
    (out,) = L.latent_upscale(latent, "nearest-exact", 8, 8, "disabled")  # at least 64 px per side
    assert out["samples"].shape == (1, 4, 8, 8)
    # Centre crop to a square keeps the middle columns: 16 wide -> 8 wide starting at column 4.
    (out,) = L.latent_upscale(latent, "nearest-exact", 64, 64, "center")
    torch.testing.assert_close(out["samples"], latent["samples"][:, :, :, 4:12])


def test_latent_upscale_by_and_methods_keep_mask_and_index():
    latent = {**ramp_latent(h=4, w=6), "noise_mask": torch.ones(1, 1, 32, 48), "batch_index": [3]}
    for method in L.UPSCALE_METHODS_LATENT:
        (out,) = L.latent_upscale_by(latent, method, 1.5)
        assert out["samples"].shape == (1, 4, 6, 9), method
        assert out["noise_mask"] is latent["noise_mask"] and out["batch_index"] == [3]
    (out,) = L.latent_upscale_by(latent, "nearest-exact", 2.0)
    assert torch.equal(out["samples"][:, :, ::2, ::2], latent["samples"])


def test_bislerp_keeps_vector_norms_between_neighbours():
    a = torch.tensor([1.0, 0.0, 0.0, 0.0])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0])
    latent = {"samples": torch.stack([a, b], dim=-1).reshape(1, 4, 1, 2)}
    (out,) = L.latent_upscale_by(latent, "bislerp", 2.0)
    norms = out["samples"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # a bilinear blend would dip to ~0.79
    (lerp,) = L.latent_upscale_by(latent, "bilinear", 2.0)
    assert lerp["samples"].norm(dim=1).min() < 0.9


def test_latent_composite_places_source_at_pixel_offset_over_8():
    to = {"samples": torch.zeros(1, 4, 6, 8)}
    src = {"samples": torch.ones(1, 4, 2, 3)}
    (out,) = L.latent_composite(to, src, x=16, y=8, feather=0)
    expected = torch.zeros(1, 4, 6, 8)
    expected[:, :, 1:3, 2:5] = 1
    assert torch.equal(out["samples"], expected)
    assert not to["samples"].any()  # input untouched
    # Near the border the source is cut, not wrapped.
    (out,) = L.latent_composite(to, src, x=56, y=40, feather=0)
    assert out["samples"][:, :, 5:, 7:].eq(1).all() and out["samples"].sum() == 4 * 1 * 1


def test_latent_composite_feather_ramps_only_inner_edges():
    to = {"samples": torch.zeros(1, 1, 8, 8)}
    src = {"samples": torch.ones(1, 1, 4, 8)}
    (out,) = L.latent_composite(to, src, x=0, y=16, feather=16)  # 2 latent cells of feather
    column = out["samples"][0, 0, :, 3]
    # rows 2..5 hold the source: top and bottom edges are inside the destination -> 0.5, 1, 1, 0.5
    torch.testing.assert_close(column, torch.tensor([0, 0, 0.5, 1, 1, 0.5, 0, 0]))
    row = out["samples"][0, 0, 3, :]
    assert row.eq(1).all()  # left/right edges touch the border: not feathered


def test_latent_composite_masked_with_mask_and_offset():
    dest = {"samples": torch.zeros(2, 4, 4, 4), "batch_index": [0, 1]}
    src = {"samples": torch.full((1, 4, 2, 2), 2.0)}
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (H, W) at source size
    (out,) = L.latent_composite_masked(dest, src, x=8, y=16, resize_source=False, mask=mask)
    s = out["samples"]
    assert s.shape == (2, 4, 4, 4) and out["batch_index"] == [0, 1]
    assert s[:, :, 2, 1].eq(2).all() and s[:, :, 3, 2].eq(2).all()
    assert s[:, :, 2, 2].eq(0).all() and s.sum() == 2 * 4 * 2 * 2.0
    (out,) = L.latent_composite_masked(dest, src, x=0, y=0, resize_source=True)
    assert out["samples"].eq(2).all()


def test_latent_blend_and_resize_of_second():
    a = {"samples": torch.ones(1, 4, 2, 2)}
    b = {"samples": torch.full((1, 4, 2, 2), 3.0)}
    (out,) = L.latent_blend(a, b, 0.25)
    torch.testing.assert_close(out["samples"], torch.full((1, 4, 2, 2), 0.25 * 1 + 0.75 * 3))
    big = {"samples": torch.full((1, 4, 8, 8), 3.0)}
    (out,) = L.latent_blend(a, big, 0.5)
    assert out["samples"].shape == (1, 4, 2, 2)
    torch.testing.assert_close(out["samples"], torch.full((1, 4, 2, 2), 2.0))


def test_latent_from_batch_slices_masks_and_indices():
    latent = ramp_latent(batch=4, h=2, w=2)
    latent["noise_mask"] = torch.arange(2, dtype=torch.float32).reshape(2, 1, 1, 1).expand(2, 1, 16, 16)
    (out,) = L.latent_from_batch(latent, batch_index=1, length=2)
    assert torch.equal(out["samples"], latent["samples"][1:3])
    assert out["batch_index"] == [1, 2]
    # The 2-mask batch is tiled to 4 (0,1,0,1) before slicing.
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.0]
    (out,) = L.latent_from_batch(latent, batch_index=10, length=5)  # clamped to the last one
    assert torch.equal(out["samples"], latent["samples"][3:4]) and out["batch_index"] == [3]
    (again,) = L.latent_from_batch(out, batch_index=0, length=1)
    assert again["batch_index"] == [3]  # original index preserved


def test_repeat_latent_batch_offsets_indices():
    latent = {**ramp_latent(batch=2, h=2, w=2), "batch_index": [4, 5], "noise_mask": torch.rand(2, 1, 16, 16)}
    (out,) = L.repeat_latent_batch(latent, amount=3)
    assert out["samples"].shape == (6, 4, 2, 2)
    assert torch.equal(out["samples"][2:4], latent["samples"])
    assert out["batch_index"] == [4, 5, 6, 7, 8, 9]
    assert out["noise_mask"].shape == (6, 1, 16, 16)
    assert torch.equal(out["noise_mask"][4:6], latent["noise_mask"])


def test_latent_batch_concatenates_and_resizes():
    a = ramp_latent(batch=1, h=4, w=4)
    b = {"samples": torch.ones(2, 4, 8, 8), "batch_index": [7, 8]}
    (out,) = L.latent_batch(a, b)
    assert out["samples"].shape == (3, 4, 4, 4)
    assert torch.equal(out["samples"][0], a["samples"][0]) and out["samples"][1:].eq(1).all()
    assert out["batch_index"] == [0, 7, 8]
    with pytest.raises(ValueError, match="samples1 has 4 channels but samples2 has 16"):
        L.latent_batch(a, {"samples": torch.ones(1, 16, 4, 4)})


def test_rotate_and_flip():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    latent = {"samples": s}
    assert L.latent_rotate(latent, "none")[0]["samples"].flatten().tolist() == [1, 2, 3, 4]
    # Clockwise: [[1,2],[3,4]] -> [[3,1],[4,2]]
    assert L.latent_rotate(latent, "90 degrees")[0]["samples"].flatten().tolist() == [3, 1, 4, 2]
    assert L.latent_rotate(latent, "180 degrees")[0]["samples"].flatten().tolist() == [4, 3, 2, 1]
    assert L.latent_rotate(latent, "270 degrees")[0]["samples"].flatten().tolist() == [2, 4, 1, 3]
    assert L.latent_flip(latent, "x-axis: vertically")[0]["samples"].flatten().tolist() == [3, 4, 1, 2]
    assert L.latent_flip(latent, "y-axis: horizontally")[0]["samples"].flatten().tolist() == [2, 1, 4, 3]
    wide = ramp_latent(h=2, w=4)
    assert L.latent_rotate(wide, "90 degrees")[0]["samples"].shape == (1, 4, 4, 2)


def test_latent_crop_window_and_clamp():
    latent = ramp_latent(h=16, w=16)
    (out,) = L.latent_crop(latent, width=64, height=32, x=16, y=8)
    assert torch.equal(out["samples"], latent["samples"][:, :, 1:5, 2:10])
    (out,) = L.latent_crop(latent, width=128, height=128, x=1000, y=1000)  # origin clamped to 16-8
    assert torch.equal(out["samples"], latent["samples"][:, :, 8:16, 8:16])


def test_set_latent_noise_mask_reshapes_and_keeps_samples():
    latent = ramp_latent()
    (out,) = L.set_latent_noise_mask(latent, torch.ones(2, 32, 48))
    assert out["noise_mask"].shape == (2, 1, 32, 48) and out["samples"] is latent["samples"]
    assert "noise_mask" not in latent
    (out,) = L.set_latent_noise_mask(latent, torch.ones(32, 48))
    assert out["noise_mask"].shape == (1, 1, 32, 48)
