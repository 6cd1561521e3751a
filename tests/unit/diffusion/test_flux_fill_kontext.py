"""FLUX.1 Fill and Kontext inputs, as ComfyUI's Flux model builds them.

Fill: a tiny Fill file (img_in of 96 * 4 features) is detected, UNETLoader's MODEL concatenates the masked
image latent (in model space) and the mask cut into 8x8 blocks (64 channels) and runs; the mask changes the
output. Kontext: reference latents become extra tokens whose ids follow ComfyUI's placement rules (checked
against hand-worked numbers), change the output, only the sampled tokens come back, and the
conditioning path (ReferenceLatent's "reference_latents" inside ``y``) gives the same as calling the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.diffusion.checkpoints.flow_detect import detect_flow_file
from engine.diffusion.models import flux
from engine.diffusion.models.flux import Flux, image_ids, patchify, reference_placement
from engine.diffusion.models.latent_formats import FLUX
from engine.diffusion.sampling.flow_models import flux_diffusion_model
from engine.diffusion.sampling.flux_inputs import fill_mask_channels
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.flow_checkpoints import write_flow_file
from tests.factories.random_weights import randomize_
from tests.unit.nodes.node_support import builtin, node_context

FILL = flux.TINY.replace(in_channels=96)


def test_fill_mask_channels_are_8x8_blocks() -> None:
    mask = torch.arange(16 * 24, dtype=torch.float32).reshape(1, 16, 24)
    out = fill_mask_channels(mask, 2, 3)
    assert out.shape == (1, 64, 2, 3)
    for r, c, i, j in ((0, 0, 0, 0), (3, 5, 1, 2), (7, 7, 1, 0), (2, 6, 0, 1)):
        assert out[0, r * 8 + c, i, j] == mask[0, i * 8 + r, j * 8 + c]


def _fill_model(tmp_path: Path) -> Any:
    dm = tmp_path / "models" / "diffusion_models"
    sd = write_flow_file(
        dm / "flux1-fill-dev.safetensors", "flux", config=FILL, layout="diffusion_model", seed=4
    )
    assert detect_flow_file(sd).variant == "flux_fill"
    ctx = node_context(
        folders=Folders.create(tmp_path), manager=ModelManager(select_device(MemoryOptions()))
    )[0]
    (model,) = builtin("loaders").unet_loader("flux1-fill-dev.safetensors", "default", context=ctx)
    return model


def test_fill_model_concatenates_image_and_mask_and_runs(tmp_path: Path) -> None:
    model = _fill_model(tmp_path)
    dm = model.diffusion_model()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 4, 6, generator=gen)
    image = torch.randn(1, 16, 4, 6, generator=gen)
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., :16, :] = 1.0
    cond = {"concat_latent_image": image, "concat_mask": mask}
    cc = dm.concat_cond(x, latent_image=None, denoise_mask=None, cond=cond)
    assert cc.shape == (1, 80, 4, 6)
    torch.testing.assert_close(cc[:, :16], FLUX.process_in(image))
    assert torch.equal(cc[:, 16:, :2], torch.ones(1, 64, 2, 6)) and torch.equal(
        cc[:, 16:, 2:], torch.zeros(1, 64, 2, 6)
    )
    ctx = torch.randn(1, 3, 40, generator=gen)
    sigma = torch.tensor([0.8])
    y = dm.encode_adm({"pooled_output": torch.randn(1, 24, generator=gen)}, 48, 32)
    with model.use():
        a = dm.apply(x, sigma, context=ctx, y=y, c_concat=cc)
        other = dm.concat_cond(
            x, latent_image=None, denoise_mask=None, cond={**cond, "concat_mask": 1 - mask}
        )
        b = dm.apply(x, sigma, context=ctx, y=y, c_concat=other)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert (a - b).abs().max() > 1e-3  # the mask reaches the model


def test_reference_placement_matches_comfyui_rules() -> None:
    shapes = [(8, 6), (4, 10)]  # latent pixels
    # offset: the first at the origin; the second goes below (8 + 4 > 6 + 10 is false) at row 8 px = 4 patches.
    assert reference_placement(shapes, (3, 4), 2, "offset") == [(1, 0, 0), (1, 4, 0)]
    assert reference_placement(shapes, (3, 4), 2, "index") == [(1, 0, 0), (2, 0, 0)]
    # uxo: index 0, past the 3x4-patch image (6, 8 px) and the previous references: (6, 8) then (14, 14) px.
    assert reference_placement(shapes, (3, 4), 2, "uxo") == [(0, 3, 4), (0, 7, 7)]
    # A tall first reference pushes the next one to the right instead.
    assert reference_placement([(10, 4), (6, 6)], (1, 1), 2, "offset") == [(1, 0, 0), (1, 0, 2)]


def _kontext() -> Flux:
    model = Flux(flux.TINY).eval()
    randomize_(model, 9)
    return model


def test_reference_tokens_carry_their_ids_and_change_the_output() -> None:
    model = _kontext()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 4, 6, generator=gen)
    ref = torch.randn(1, 16, 6, 4, generator=gen)
    ctx, y = torch.randn(1, 3, 40, generator=gen), torch.randn(1, 24, generator=gen)
    t, g = torch.tensor([0.6]), torch.tensor([3.5])
    with torch.no_grad():
        plain = model(x, t, ctx, y, guidance=g)
        got = model(x, t, ctx, y, guidance=g, ref_latents=[ref])
        # By hand: the 2x3 sampled patches with ids (0, i, j), then the 3x2 reference patches with (1, i, j).
        ids = torch.cat([image_ids(1, 2, 3), image_ids(1, 3, 2, index=1)], dim=1)
        assert ids[0, 6].tolist() == [1.0, 0.0, 0.0] and ids[0, -1].tolist() == [1.0, 2.0, 1.0]
        tokens = torch.cat([patchify(x, 2), patchify(ref, 2)], dim=1)
        out = model.forward_tokens(tokens, ids, ctx, torch.zeros(1, 3, 3), t, y, g)[:, :6]
        want = out.reshape(1, 2, 3, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 4, 6)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want)
    assert (got - plain).abs().max() > 1e-3


def test_reference_latents_travel_through_the_conditioning() -> None:
    model = _kontext()
    dm = flux_diffusion_model(model)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 4, 4, generator=gen)
    refs = [torch.randn(1, 16, 4, 6, generator=gen), torch.randn(1, 16, 2, 2, generator=gen)]
    ctx = torch.randn(2, 3, 40, generator=gen)
    pooled = torch.randn(1, 24, generator=gen)
    cond = {
        "pooled_output": pooled,
        "guidance": 2.5,
        "reference_latents": refs,
        "reference_latents_method": "index",
    }
    y = dm.encode_adm(cond, 32, 32).repeat(2, 1)
    sigma = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        got = dm.apply(x, sigma, context=ctx, y=y)
        v = model(
            x, sigma, ctx, pooled.repeat(2, 1), guidance=torch.tensor([2.5, 2.5]),
            ref_latents=[FLUX.process_in(r) for r in refs], ref_method="index",
        )  # fmt: skip
    torch.testing.assert_close(got, x - sigma.reshape(-1, 1, 1, 1) * v)  # flow: x0 = x - sigma * v


def test_entries_with_different_references_in_one_batch() -> None:
    # Two entries whose references differ in shape but not in size share a y width (and so a model call):
    # each row must still see its own references.
    model = _kontext()
    dm = flux_diffusion_model(model)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 4, 4, generator=gen)
    ctx = torch.randn(2, 3, 40, generator=gen)
    tall, wide = torch.randn(1, 16, 6, 4, generator=gen), torch.randn(1, 16, 4, 6, generator=gen)
    ys = [dm.encode_adm({"reference_latents": [r]}, 32, 32) for r in (tall, wide)]
    assert ys[0].shape == ys[1].shape
    sigma = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        both = dm.apply(x, sigma, context=ctx, y=torch.cat(ys))
        one = [dm.apply(x[i : i + 1], sigma[:1], context=ctx[i : i + 1], y=ys[i]) for i in range(2)]
    torch.testing.assert_close(both, torch.cat(one))
