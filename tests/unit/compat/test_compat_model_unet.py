"""The UNet honours ComfyUI's patch points (transformer_options "patches" / "patches_replace").

Each expected value is built by hand on an unpatched model: torch forward hooks replace a module's output
with attention written out here with an explicit softmax, or change a block's input or output, so the
reference does not go through the patch machinery under test.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from engine.diffusion.models.unet import UNetConfig, UNetModel
from engine.diffusion.models.unet_blocks import BasicTransformerBlock, CrossAttention
from engine.handles.comfy_surface.attention import optimized_attention


@pytest.fixture(scope="module")
def model() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(UNetConfig.tiny()).eval()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 16, 16, generator=gen),
        torch.tensor([3.0, 900.0]),
        torch.randn(2, 5, 32, generator=gen),
    )


def hand_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, written out."""
    b, n, inner = q.shape
    d = inner // heads
    qh = q.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    kh = k.reshape(b, k.shape[1], heads, d).permute(0, 2, 1, 3)
    vh = v.reshape(b, v.shape[1], heads, d).permute(0, 2, 1, 3)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ vh).permute(0, 2, 1, 3).reshape(b, n, inner)


def run(model: UNetModel, batch, options: dict[str, Any] | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(*batch, transformer_options=options or {})


def run_hooked(model: UNetModel, batch, hooks: list[tuple[torch.nn.Module, Any, bool]]) -> torch.Tensor:
    handles = [
        m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, fn, pre in hooks
    ]
    try:
        return run(model, batch)
    finally:
        for h in handles:
            h.remove()


def attn_modules(model: UNetModel, name: str) -> list[CrossAttention]:
    return [getattr(m, name) for m in model.modules() if isinstance(m, BasicTransformerBlock)]


def test_no_patch_and_empty_patch_tables_give_the_same_output(model, batch) -> None:
    plain = run(model, batch)
    assert torch.equal(run(model, batch, {"patches": {}, "patches_replace": {}}), plain)


def test_attn2_patch_scaling_the_values_equals_attention_by_hand(model, batch) -> None:
    def double_values(n, context, value, extra):
        return n, context, value * 2.0

    got = run(model, batch, {"patches": {"attn2_patch": [double_values]}})

    def by_hand(m, inputs, output):
        x, context = inputs[0], inputs[1]
        return m.to_out[0](hand_attention(m.to_q(x), m.to_k(context), m.to_v(context * 2.0), m.heads))

    expected = run_hooked(model, batch, [(m, by_hand, False) for m in attn_modules(model, "attn2")])
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, run(model, batch), atol=1e-3)


def test_attn1_replace_with_plain_attention_is_bit_identical(model, batch) -> None:
    calls: list[tuple[Any, ...]] = []

    def plain(q, k, v, extra):
        calls.append(extra["block"] + (extra["block_index"],))
        return optimized_attention(q, k, v, extra["n_heads"])

    table = {(kind, i): plain for kind, i in (("input", 1), ("input", 3), ("middle", 0), ("output", 2))}
    got = run(model, batch, {"patches_replace": {"attn1": table}})
    assert torch.equal(got, run(model, batch))
    assert calls == [("input", 1, 0), ("input", 3, 0), ("middle", 0, 0), ("output", 2, 0)]


def test_attn1_replace_returning_zeros_equals_a_hand_built_variant(model, batch) -> None:
    got = run(
        model,
        batch,
        {"patches_replace": {"attn1": {("input", 1, 0): lambda q, k, v, e: torch.zeros_like(q)}}},
    )
    target = model.input_blocks[1][1].transformer_blocks[0].attn1

    def zero_attention(m, inputs, output):
        return m.to_out[0](torch.zeros_like(m.to_q(inputs[0])))

    expected = run_hooked(model, batch, [(target, zero_attention, False)])
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, run(model, batch), atol=1e-3)


def test_the_three_part_key_wins_over_the_two_part_key(model, batch) -> None:
    seen: list[str] = []

    def two(q, k, v, e):
        seen.append("two")
        return optimized_attention(q, k, v, e["n_heads"])

    def three(q, k, v, e):
        seen.append("three")
        return optimized_attention(q, k, v, e["n_heads"])

    run(model, batch, {"patches_replace": {"attn2": {("output", 1): two, ("output", 1, 0): three}}})
    assert seen == ["three"]


def test_extra_options_carry_comfyui_keys(model, batch) -> None:
    seen: list[dict[str, Any]] = []

    def record(n, context, value, extra):
        seen.append(dict(extra))
        return n, context, value

    options = {
        "patches": {"attn2_patch": [record]},
        "cond_or_uncond": [0, 1],
        "sigmas": torch.tensor([1.0, 1.0]),
    }
    run(model, batch, options)
    blocks = [e["block"] for e in seen]
    assert blocks == [
        ("input", 1),
        ("input", 3),
        ("middle", 0),
        ("output", 0),
        ("output", 1),
        ("output", 2),
        ("output", 3),
    ]
    assert [e["transformer_index"] for e in seen] == list(range(len(seen)))
    first = seen[0]
    assert first["original_shape"] == [2, 4, 16, 16]
    assert first["activations_shape"] == [2, 32, 16, 16]
    assert (first["n_heads"], first["dim_head"], first["block_index"]) == (8, 4, 0)
    assert first["cond_or_uncond"] == [0, 1] and torch.equal(first["sigmas"], torch.tensor([1.0, 1.0]))
    assert "patches" not in first and "patches_replace" not in first
    assert "block" not in options  # the caller's dict is not written into


def test_attn_output_patches_scale_the_attention_output(model, batch) -> None:
    got = run(model, batch, {"patches": {"attn1_output_patch": [lambda n, e: n * 0.5]}})

    def halve(m, inputs, output):
        return output * 0.5

    expected = run_hooked(model, batch, [(m, halve, False) for m in attn_modules(model, "attn1")])
    assert torch.allclose(got, expected, atol=1e-6)


def test_ipadapter_style_attn2_replace_adds_image_token_attention(model, batch) -> None:
    """Extra keys/values from image tokens, chosen per batch chunk by cond_or_uncond, weighted 0.7."""
    gen = torch.Generator().manual_seed(5)
    image_tokens = {0: torch.randn(1, 4, 32, generator=gen), 1: torch.zeros(1, 4, 32)}  # cond, uncond
    weight = 0.7

    def ip_tokens(cond_or_uncond: list[int], per_chunk: int) -> torch.Tensor:
        return torch.cat([image_tokens[c].expand(per_chunk, -1, -1) for c in cond_or_uncond])

    def replace_for(attn: CrossAttention):
        def fn(q, k, v, extra):
            out = optimized_attention(q, k, v, extra["n_heads"])
            tokens = ip_tokens(extra["cond_or_uncond"], q.shape[0] // len(extra["cond_or_uncond"]))
            ip_out = optimized_attention(q, attn.to_k(tokens), attn.to_v(tokens), extra["n_heads"])
            return out + weight * ip_out

        return fn

    table = {}
    for i, block in enumerate(model.input_blocks):
        for layer in block:
            if hasattr(layer, "transformer_blocks"):
                table[("input", i, 0)] = replace_for(layer.transformer_blocks[0].attn2)
    got = run(model, batch, {"patches_replace": {"attn2": table}, "cond_or_uncond": [0, 1]})

    def by_hand(m, inputs, output):
        x, context = inputs[0], inputs[1]
        q = m.to_q(x)
        tokens = ip_tokens([0, 1], 1)
        text = hand_attention(q, m.to_k(context), m.to_v(context), m.heads)
        image = hand_attention(q, m.to_k(tokens), m.to_v(tokens), m.heads)
        return m.to_out[0](text + weight * image)

    targets = [b[1].transformer_blocks[0].attn2 for b in model.input_blocks if len(b) > 1]
    expected = run_hooked(model, batch, [(m, by_hand, False) for m in targets])
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, run(model, batch), atol=1e-3)


def test_input_block_patch_changes_the_block_output_and_its_skip(model, batch) -> None:
    def double_block_1(h, options):
        return h * 2.0 if options["block"] == ("input", 1) else h

    got = run(model, batch, {"patches": {"input_block_patch": [double_block_1]}})
    expected = run_hooked(model, batch, [(model.input_blocks[1], lambda m, i, o: o * 2.0, False)])
    assert torch.allclose(got, expected, atol=1e-6)


def test_input_block_patch_after_skip_leaves_the_skip_alone(model, batch) -> None:
    def double_after_block_1(h, options):
        return h * 2.0 if options["block"] == ("input", 1) else h

    got = run(model, batch, {"patches": {"input_block_patch_after_skip": [double_after_block_1]}})
    # Only the next block's input doubles; the skip stored for the output side is the unpatched output.
    expected = run_hooked(
        model, batch, [(model.input_blocks[2], lambda m, inputs: (inputs[0] * 2.0, *inputs[1:]), True)]
    )
    assert torch.allclose(got, expected, atol=1e-6)


def test_output_block_patch_gets_h_and_the_skip(model, batch) -> None:
    def halve_skip(h, hsp, options):
        return (h, hsp * 0.5) if options["block"] == ("output", 0) else (h, hsp)

    got = run(model, batch, {"patches": {"output_block_patch": [halve_skip]}})
    channels_h = model.output_blocks[0][0].channels - model.input_blocks[-1][0].out_channels

    def halve_second_part(m, inputs):
        x = inputs[0].clone()
        x[:, channels_h:] *= 0.5
        return (x, *inputs[1:])

    expected = run_hooked(model, batch, [(model.output_blocks[0], halve_second_part, True)])
    assert torch.allclose(got, expected, atol=1e-6)


def test_middle_patch_runs_between_the_attentions(model, batch) -> None:
    def shift(x, extra):
        return x + 0.25 if extra["block"] == ("middle", 0) else x

    got = run(model, batch, {"patches": {"middle_patch": [shift]}})
    target = model.middle_block[1].transformer_blocks[0]
    # x + attn1 + 0.25 == x + (attn1 + 0.25): the shift lands on attn1's output by hand.
    expected = run_hooked(model, batch, [(target.attn1, lambda m, i, o: o + 0.25, False)])
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, run(model, batch), atol=1e-4)


def test_emb_patch_changes_the_time_embedding(model, batch) -> None:
    got = run(model, batch, {"patches": {"emb_patch": [lambda emb, channels, options: emb * 0.0]}})
    expected = run_hooked(model, batch, [(model.time_embed, lambda m, i, o: o * 0.0, False)])
    assert torch.equal(got, expected)
