"""Parity: our SD3 ControlNet vs diffusers' ``SD3ControlNetModel``, and the MMDiT fed its residuals vs
``SD3Transformer2DModel(block_controlnet_hidden_states=...)``, same tiny random weights (fp32, <= 1e-4).

The ControlNet is saved in diffusers' own layout (what InstantX ships) and loaded through our detection and
conversion (``build_mmdit_controlnet``), so the key mapping and the inferred config are checked too. The main
model has 4 blocks and the ControlNet 2, so each residual is used by two consecutive blocks (ComfyUI repeats
it; diffusers indexes ``block // interval``): both must agree.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from engine.diffusion.checkpoints.control_mmdit import build_mmdit_controlnet, is_mmdit_controlnet
from engine.diffusion.checkpoints.flow_diffusers import sd3_diffusers_to_original
from engine.diffusion.models.mmdit import MMDiT, MMDiTConfig
from engine.diffusion.models.mmdit_controlnet import TINY
from tests.factories.diffusers_flow import sd3_transformer_kwargs
from tests.factories.random_weights import randomize_

pytestmark = [pytest.mark.parity, pytest.mark.slow]

MAIN = MMDiTConfig(
    hidden_size=256, depth=4, num_heads=4, pos_embed_max_size=8, adm_in_channels=24, context_in_dim=40
)


def _diffusers_controlnet(qk_norm: bool) -> diffusers.SD3ControlNetModel:
    ref = diffusers.SD3ControlNetModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=TINY.num_blocks,
        attention_head_dim=64,
        num_attention_heads=4,
        joint_attention_dim=40,
        caption_projection_dim=256,
        pooled_projection_dim=24,
        out_channels=16,
        pos_embed_max_size=8,
        qk_norm="rms_norm" if qk_norm else None,
    ).eval()
    randomize_(ref, 11)  # the zero-initialised controlnet_blocks / pos_embed_input get values too
    return ref


def _inputs(h: int, w: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, h, w, generator=gen)
    hint = torch.randn(2, 16, h, w, generator=gen)
    context = torch.randn(2, 7, 40, generator=gen)
    pooled = torch.randn(2, 24, generator=gen)
    t = torch.tensor([999.0, 312.5])
    return x, hint, context, pooled, t


def _reference_samples(ref: diffusers.SD3ControlNetModel, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x, hint, context, pooled, t = inputs
    # ComfyUI embeds zeros for the pooled vector of these ControlNets (as diffusers' pipelines do).
    out = ref(
        hidden_states=x,
        controlnet_cond=hint,
        encoder_hidden_states=context,
        pooled_projections=torch.zeros_like(pooled),
        timestep=t,
    )
    return tuple(out.controlnet_block_samples)


@pytest.mark.parametrize("qk_norm", [False, True], ids=["sd3", "sd3.5-qknorm"])
def test_controlnet_residuals_match_diffusers(qk_norm: bool) -> None:
    ref = _diffusers_controlnet(qk_norm)
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    assert is_mmdit_controlnet(sd)
    ours = build_mmdit_controlnet(sd).eval()
    assert ours.config.num_blocks == 2 and ours.config.main_depth == 4 and ours.config.qk_norm == qk_norm
    x, hint, context, pooled, t = _inputs(8, 12)
    with torch.no_grad():
        got = ours(x, t, context, hint, y=pooled)["output"]
        want = _reference_samples(ref, x, hint, context, pooled, t)
    assert len(got) == 3  # [block 0, block 0, block 1]: main depth 4 // 2 blocks, the last once less
    assert got[0] is got[1]
    for a, b in zip((got[0], got[2]), want, strict=True):
        assert a is not None and b.abs().max() > 0.1
        assert (a - b).abs().max().item() <= 1e-4


def test_mmdit_with_controlnet_matches_diffusers_transformer() -> None:
    cn_ref = _diffusers_controlnet(False)
    main_ref = diffusers.SD3Transformer2DModel(**sd3_transformer_kwargs(MAIN)).eval()
    randomize_(main_ref, 12)
    main = MMDiT(MAIN).eval()
    main.load_state_dict(sd3_diffusers_to_original(main_ref.state_dict()))
    cn = build_mmdit_controlnet(dict(cn_ref.state_dict())).eval()
    x, hint, context, pooled, t = _inputs(8, 8)
    with torch.no_grad():
        control = cn(x, t, context, hint, y=pooled)
        got = main(x, t, context=context, y=pooled, control=control)
        plain = main(x, t, context=context, y=pooled)
        samples = _reference_samples(cn_ref, x, hint, context, pooled, t)
        want = main_ref(
            hidden_states=x,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=t,
            block_controlnet_hidden_states=samples,
        ).sample
    assert (got - plain).abs().max() > 0.05  # the residuals matter
    assert (got - want).abs().max().item() <= 1e-4
