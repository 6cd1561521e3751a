"""UNet forward contract: ControlNet residuals, the block_output patch point, dtypes, input checks.

Expected values come from plain torch module hooks on the same model, an independent route to the
same place in the network.
"""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.models.unet import UNetConfig, UNetModel

pytestmark = pytest.mark.slow


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


def run_with_hook(model: torch.nn.Module, module: torch.nn.Module, hook, batch, pre: bool = False):
    handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(*batch)
    finally:
        handle.remove()


def test_control_input_is_added_after_the_matching_input_block(model: UNetModel, batch) -> None:
    n = len(model.input_blocks)
    k = 2  # the Downsample block of the tiny model: 32 channels at 8x8
    r = torch.randn(2, 32, 8, 8)
    expected = run_with_hook(model, model.input_blocks[k], lambda m, i, o: o + r, batch)
    # "input" entries are popped from the end: block k takes entry n-1-k.
    lst: list[torch.Tensor | None] = [None] * n
    lst[n - 1 - k] = r
    with torch.no_grad():
        got = model(*batch, control={"input": lst})
    assert torch.allclose(got, expected, atol=1e-5)
    assert lst[n - 1 - k] is r and len(lst) == n  # caller's list untouched


def test_control_output_is_added_to_the_skip_connection(model: UNetModel, batch) -> None:
    n = len(model.input_blocks)
    k = 1  # residual for the skip stored after input_blocks[1] (32 channels, 16x16)
    r = torch.randn(2, 32, 16, 16)
    j = len(model.output_blocks) - 1 - k  # the output block that consumes that skip

    def add_to_skip(module, args):
        x, *rest = args
        x = x.clone()
        x[:, -32:] += r
        return (x, *rest)

    expected = run_with_hook(model, model.output_blocks[j], add_to_skip, batch, pre=True)
    # A ControlNet's outputs in input-block order line up with pop()-from-the-end consumption.
    lst: list[torch.Tensor | None] = [None] * n
    lst[k] = r
    with torch.no_grad():
        got = model(*batch, control={"output": lst, "input": [], "middle": [None]})
        plain = model(*batch)
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3


def test_control_middle_is_added_after_the_middle_block(model: UNetModel, batch) -> None:
    r = torch.randn(2, 64, 8, 8)
    assert model.middle_block is not None
    expected = run_with_hook(model, model.middle_block, lambda m, i, o: o + r, batch)
    with torch.no_grad():
        got = model(*batch, control={"middle": [r]})
    assert torch.allclose(got, expected, atol=1e-5)


def test_block_output_patch_sees_every_block_in_order(model: UNetModel, batch) -> None:
    seen: list[tuple[str, int]] = []

    def record(h: torch.Tensor, opts: dict) -> torch.Tensor:
        seen.append(opts["block"])
        return h

    options = {"patches": {"block_output": [record]}}
    with torch.no_grad():
        got = model(*batch, transformer_options=options)
        plain = model(*batch)
    assert torch.equal(got, plain)
    assert seen == (
        [("input", i) for i in range(len(model.input_blocks))]
        + [("middle", 0)]
        + [("output", i) for i in range(len(model.output_blocks))]
    )
    assert "block" not in options  # the caller's dict is not modified


def test_block_output_patch_can_change_a_block(model: UNetModel, batch) -> None:
    def double_output_block_1(h: torch.Tensor, opts: dict) -> torch.Tensor:
        return h * 2 if opts["block"] == ("output", 1) else h

    expected = run_with_hook(model, model.output_blocks[1], lambda m, i, o: o * 2, batch)
    with torch.no_grad():
        got = model(*batch, transformer_options={"patches": {"block_output": [double_output_block_1]}})
    assert torch.allclose(got, expected, atol=1e-5)


def test_scalar_timestep_broadcasts(model: UNetModel, batch) -> None:
    x, _, ctx = batch
    with torch.no_grad():
        a = model(x, 250.0, ctx)
        b = model(x, torch.tensor([250.0, 250.0]), ctx)
    assert torch.equal(a, b)


def test_bfloat16_model_keeps_input_dtype_and_is_close(model: UNetModel, batch) -> None:
    half = UNetModel(model.config, dtype=torch.bfloat16)
    half.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = model(*batch)
        got = half(*batch)
    assert half.dtype == torch.bfloat16
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()


def test_missing_conditioning_is_reported() -> None:
    sdxl = UNetModel(UNetConfig.tiny_sdxl())
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="sdxl_adm"):
        sdxl(x, torch.tensor([1.0]), torch.randn(1, 3, 64))
    with pytest.raises(ValueError, match="context"):
        sdxl(x, torch.tensor([1.0]), None, y=torch.randn(1, 32 + 6 * 256))
