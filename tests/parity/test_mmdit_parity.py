"""Parity: our MMDiT (SD3 / SD3.5 / MMDiT-X) vs diffusers' SD3Transformer2DModel, same tiny random weights.

The reference is loaded through diffusers' own ``convert_sd3_transformer_checkpoint_to_diffusers`` of a
single-file checkpoint in the original layout (``model.diffusion_model.*``), so our key names, the
order of the modulation chunks and the last block's pre-only text stream are checked too.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
from safetensors.torch import load_file, save_file

from engine.diffusion.models import mmdit
from engine.diffusion.models.mmdit import TINY, TINY_X, MMDiT, MMDiTConfig
from tests.factories.diffusers_flow import sd3_transformer_kwargs
from tests.factories.random_weights import randomize_

pytestmark = [pytest.mark.parity, pytest.mark.slow]

PREFIX = "model.diffusion_model."


def build_pair(cfg: MMDiTConfig, tmp_path: Path, seed: int = 0):
    ours = MMDiT(cfg).eval()
    randomize_(ours, seed, unit=("pos_embed",))
    path = tmp_path / "sd3.safetensors"
    save_file({PREFIX + k: v.contiguous() for k, v in ours.state_dict().items()}, str(path))
    converted = convert_sd3_transformer_checkpoint_to_diffusers(load_file(str(path)))
    ref = diffusers.SD3Transformer2DModel(**sd3_transformer_kwargs(cfg)).eval()
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours, ref


def inputs(cfg: MMDiTConfig, h: int, w: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.in_channels, h, w, generator=gen)
    context = torch.randn(2, 7, cfg.context_in_dim, generator=gen)
    y = torch.randn(2, cfg.adm_in_channels, generator=gen)
    t = torch.tensor([999.0, 312.5])
    return x, t, context, y


@pytest.mark.parametrize(
    ("cfg", "size"),
    [(TINY, (8, 12)), (TINY_X, (12, 8))],
    ids=["sd3", "mmdit-x"],
)
def test_mmdit_matches_diffusers(cfg: MMDiTConfig, size: tuple[int, int], tmp_path: Path) -> None:
    ours, ref = build_pair(cfg, tmp_path)
    x, t, context, y = inputs(cfg, *size)
    with torch.no_grad():
        a = ours(x, t, context=context, y=y)
        b = ref(hidden_states=x, encoder_hidden_states=context, pooled_projections=y, timestep=t).sample
    assert a.shape == x.shape
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() <= 1e-4


def test_mmdit_position_crop_is_centred(tmp_path: Path) -> None:
    # A 4x2-patch latent must use rows 2..5 and columns 3..4 of the 8x8 grid, as diffusers crops.
    ours, ref = build_pair(TINY, tmp_path, seed=3)
    x, t, context, y = inputs(TINY, 8, 4, seed=4)
    with torch.no_grad():
        a = ours(x, t, context=context, y=y)
        b = ref(hidden_states=x, encoder_hidden_states=context, pooled_projections=y, timestep=t).sample
        grid = ours.pos_embed.reshape(8, 8, -1)
        assert torch.equal(ours.cropped_pos_embed(4, 2)[0], grid[2:6, 3:5].reshape(8, -1))
    assert (a - b).abs().max().item() <= 1e-4


def test_mmdit_odd_latent_is_padded_and_cropped() -> None:
    model = MMDiT(TINY).eval()
    randomize_(model, 5, unit=("pos_embed",))
    x, t, context, y = inputs(TINY, 7, 9, seed=6)
    with torch.no_grad():
        out = model(x, t, context=context, y=y)
        # Circular padding to 8x10, then the same crop: equal to running the padded latent.
        padded = torch.cat([x, x[:, :, :1]], dim=2)
        padded = torch.cat([padded, padded[:, :, :, :1]], dim=3)
        full = model(padded, t, context=context, y=y)
    assert out.shape == x.shape
    assert torch.allclose(out, full[:, :, :7, :9], atol=1e-6)


@pytest.mark.parametrize("name", ["SD3_MEDIUM", "SD35_LARGE", "SD35_MEDIUM"])
def test_mmdit_presets_convert_strictly_at_full_size(name: str) -> None:
    # Shapes only (meta tensors): every key of the full-size preset maps through diffusers' conversion
    # onto the matching diffusers model with nothing missing, left over or mis-shaped.
    cfg = getattr(mmdit, name)
    with torch.device("meta"):
        ours = MMDiT(cfg)
        ref = diffusers.SD3Transformer2DModel(**sd3_transformer_kwargs(cfg))
    sd = {PREFIX + k: v for k, v in ours.state_dict().items()}
    ref.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(sd), strict=True, assign=True)
    # diffusers keeps the position grid as a buffer, not a parameter.
    grid = cfg.pos_embed_max_size**2 * cfg.hidden_size
    expected = {"SD3_MEDIUM": 2_028_328_000, "SD35_LARGE": 8_056_627_520, "SD35_MEDIUM": 2_243_171_520}
    assert sum(p.numel() for p in ref.parameters()) == expected[name]
    assert sum(p.numel() for p in ours.parameters()) == expected[name] + grid


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mmdit_half_precision_tracks_fp32(dtype: torch.dtype) -> None:
    model = MMDiT(TINY_X).eval()
    randomize_(model, 7, unit=("pos_embed",))
    x, t, context, y = inputs(TINY_X, 8, 8, seed=8)
    with torch.no_grad():
        full = model(x, t, context=context, y=y)
        half = model.to(dtype)(x, t, context=context, y=y)
    assert half.dtype == torch.float32  # the output follows x, not the weights
    assert (half - full).abs().max() <= 0.03 * full.abs().max()
