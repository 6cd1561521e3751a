"""Parity: our Flux (dev with guidance, schnell without) vs diffusers' FluxTransformer2DModel.

The reference is loaded through diffusers' own ``convert_flux_transformer_checkpoint_to_diffusers`` of a
single-file checkpoint in the original layout (``model.diffusion_model.*``). That function hard-codes
FLUX.1's width (3072 channels, MLP 12288) when it cuts ``single_blocks.N.linear1`` into q, k, v and the MLP
input; for the tiny test model that one ``torch.split`` is given the tiny widths instead (nothing else in
the conversion is touched, and the test asserts the substitution happened for each linear1 weight and bias).
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import pytest
import torch
from diffusers.loaders import single_file_utils
from safetensors.torch import load_file, save_file

from engine.diffusion.models.flux import FLUX_DEV, FLUX_SCHNELL, TINY, TINY_SCHNELL, Flux, FluxConfig
from tests.factories.diffusers_flow import flux_transformer_kwargs
from tests.factories.random_weights import randomize_

pytestmark = [pytest.mark.parity, pytest.mark.slow]

PREFIX = "model.diffusion_model."
FLUX1_LINEAR1_SPLIT = (3072, 3072, 3072, 12288)


class _TorchWithTinyLinear1Split:
    """Stands in for ``torch`` inside single_file_utils: the FLUX.1-sized split becomes the tiny one."""

    def __init__(self, cfg: FluxConfig):
        self.sizes = (cfg.hidden_size,) * 3 + (cfg.mlp_hidden,)
        self.substituted = 0

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def split(self, tensor: torch.Tensor, sizes, dim: int = 0):
        if tuple(sizes) == FLUX1_LINEAR1_SPLIT:
            self.substituted += 1
            sizes = self.sizes
        return torch.split(tensor, sizes, dim)


def build_pair(cfg: FluxConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int = 0):
    ours = Flux(cfg).eval()
    randomize_(ours, seed)
    path = tmp_path / "flux.safetensors"
    save_file({PREFIX + k: v.contiguous() for k, v in ours.state_dict().items()}, str(path))
    shim = _TorchWithTinyLinear1Split(cfg)
    monkeypatch.setattr(single_file_utils, "torch", shim)
    converted = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers(load_file(str(path)))
    monkeypatch.undo()
    assert shim.substituted == 2 * cfg.depth_single_blocks  # weight and bias of each linear1
    ref = diffusers.FluxTransformer2DModel(**flux_transformer_kwargs(cfg)).eval()
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours, ref


def pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' pipeline convention: 2x2 patches (c, dy, dx) per token, ids (0, row, col)."""
    b, c, h, w = x.shape
    tokens = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    ids = torch.stack((torch.zeros_like(rows), rows, cols), dim=-1).reshape(-1, 3).float()
    return tokens, ids


def unpack(tokens: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    b = tokens.shape[0]
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize("cfg", [TINY, TINY_SCHNELL], ids=["dev", "schnell"])
def test_flux_matches_diffusers(cfg: FluxConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, ref = build_pair(cfg, tmp_path, monkeypatch)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 8, 12, generator=gen)
    context = torch.randn(2, 5, cfg.context_in_dim, generator=gen)
    y = torch.randn(2, cfg.vec_in_dim, generator=gen)
    t = torch.tensor([1.0, 0.35])
    guidance = torch.tensor([3.5, 2.0]) if cfg.guidance_embed else None
    with torch.no_grad():
        a = ours(x, t, context, y, guidance=guidance)
        tokens, img_ids = pack(x)
        b_tokens = ref(
            hidden_states=tokens,
            encoder_hidden_states=context,
            pooled_projections=y,
            timestep=t,
            img_ids=img_ids,
            txt_ids=torch.zeros(5, 3),
            guidance=guidance,
        ).sample
    b = unpack(b_tokens, cfg.out_channels, 8, 12)
    assert a.shape == x.shape
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() <= 1e-4


def test_flux_dev_guidance_changes_output_and_none_skips_it() -> None:
    model = Flux(TINY).eval()
    randomize_(model, 2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 6, 6, generator=gen)
    context = torch.randn(1, 4, TINY.context_in_dim, generator=gen)
    y = torch.randn(1, TINY.vec_in_dim, generator=gen)
    t = torch.tensor([0.5])
    with torch.no_grad():
        g1 = model(x, t, context, y, guidance=torch.tensor([1.0]))
        g4 = model(x, t, context, y, guidance=torch.tensor([4.0]))
        none = model(x, t, context, y)
        # Without guidance the embedding is simply not added (FluxDisableGuidance semantics).
        model.guidance_in = None
        stripped = model(x, t, context, y, guidance=torch.tensor([4.0]))
    assert (g1 - g4).abs().max() > 1e-3
    assert torch.equal(none, stripped)


def test_flux_odd_latent_is_padded_and_cropped() -> None:
    model = Flux(TINY_SCHNELL).eval()
    randomize_(model, 4)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 5, 7, generator=gen)
    context = torch.randn(1, 3, TINY.context_in_dim, generator=gen)
    y = torch.randn(1, TINY.vec_in_dim, generator=gen)
    t = torch.tensor([0.8])
    with torch.no_grad():
        out = model(x, t, context, y)
        padded = torch.cat([x, x[:, :, :1]], dim=2)
        padded = torch.cat([padded, padded[:, :, :, :1]], dim=3)
        full = model(padded, t, context, y)
    assert out.shape == x.shape
    assert torch.allclose(out, full[:, :, :5, :7], atol=1e-6)


@pytest.mark.parametrize("cfg", [FLUX_DEV, FLUX_SCHNELL], ids=["dev", "schnell"])
def test_flux_presets_convert_strictly_at_full_size(cfg: FluxConfig) -> None:
    # Shapes only (meta tensors), and at FLUX.1's real width the conversion needs no stand-in split.
    with torch.device("meta"):
        ours = Flux(cfg)
        ref = diffusers.FluxTransformer2DModel(guidance_embeds=cfg.guidance_embed)
    sd = {PREFIX + k: v for k, v in ours.state_dict().items()}
    converted = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers(sd)
    ref.load_state_dict(converted, strict=True, assign=True)
    # FLUX.1-dev is the 11.9 B-parameter model; schnell lacks only guidance_in.
    guidance = 256 * 3072 + 3072 + 3072 * 3072 + 3072
    expected = 11_901_408_320 - (0 if cfg.guidance_embed else guidance)
    assert sum(p.numel() for p in ours.parameters()) == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flux_half_precision_tracks_fp32(dtype: torch.dtype) -> None:
    model = Flux(TINY).eval()
    randomize_(model, 6)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, 8, 8, generator=gen)
    context = torch.randn(1, 5, TINY.context_in_dim, generator=gen)
    y = torch.randn(1, TINY.vec_in_dim, generator=gen)
    t, g = torch.tensor([0.5]), torch.tensor([3.5])
    with torch.no_grad():
        full = model(x, t, context, y, guidance=g)
        half = model.to(dtype)(x, t, context, y, guidance=g)
    assert half.dtype == torch.float32  # the output follows x, not the weights
    assert (half - full).abs().max() <= 0.03 * full.abs().max()


def test_flux_fp16_overflow_stays_finite() -> None:
    model = Flux(TINY).eval()
    randomize_(model, 0)
    block = model.single_blocks[0]
    seen: list[torch.Tensor] = []
    block.linear2.register_forward_hook(lambda _m, _i, out: seen.append(out))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 8, 8, generator=gen)
    context = torch.randn(1, 5, TINY.context_in_dim, generator=gen)
    y = torch.randn(1, TINY.vec_in_dim, generator=gen)
    with torch.no_grad():
        # Push a single block's output past 65504 (weights stay finite); inf would become NaN downstream.
        block.linear1.weight.mul_(30)
        block.linear2.weight.mul_(3000)
        model.half()
        out = model(x, torch.tensor([0.5]), context, y, guidance=torch.tensor([3.5]))
    assert torch.isinf(seen[0]).any()
    assert torch.isfinite(out).all()
