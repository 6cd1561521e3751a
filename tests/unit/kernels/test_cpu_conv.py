"""FastConv2d: torch's convolution with the weight packed once in oneDNN's layout, rebuilt when it changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels import cpu_conv
from engine.kernels.layers import FastConv2d, release_kernel_caches, use_fast_kernels

pytestmark = pytest.mark.skipif(not cpu_conv.available(), reason="this torch build has no oneDNN reorder op")


def _conv(*args, **kwargs) -> nn.Conv2d:
    torch.manual_seed(0)
    layer = nn.Conv2d(*args, **kwargs).eval()
    use_fast_kernels(layer)
    assert type(layer) is FastConv2d
    return layer


def _input(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reference(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "padding": 1, "stride": 2},
        {"kernel_size": 1},
        {"kernel_size": 3, "padding": 2, "dilation": 2, "bias": False},
        {"kernel_size": 3, "padding": 1, "groups": 4},
    ],
)
def test_packed_convolution_matches_torch(kwargs):
    layer = _conv(8, 16, **kwargs)
    x = _input(2, 8, 11, 9)
    with torch.inference_mode():
        assert cpu_conv.eligible(layer, x)
        out = layer(x)
        assert cpu_conv.packed_bytes(layer) > 0  # the packed path ran
        torch.testing.assert_close(out, _reference(layer, x), rtol=1e-5, atol=1e-5)


def test_pack_is_reused_then_rebuilt_after_an_in_place_weight_change():
    """A LoRA patch writes into the weight in place: the next call must see the new weight."""
    layer = _conv(4, 4, 3, padding=1)
    x = _input(1, 4, 6, 6)
    with torch.no_grad():
        layer(x)
        first = cpu_conv.packed_weight(layer, tuple(x.shape))
        assert cpu_conv.packed_weight(layer, tuple(x.shape)) is first
        layer.weight.add_(0.5)
        out = layer(x)
        assert cpu_conv.packed_weight(layer, tuple(x.shape)) is not first
        torch.testing.assert_close(out, _reference(layer, x), rtol=1e-5, atol=1e-5)


def test_replaced_parameter_and_new_input_shape_repack():
    layer = _conv(4, 4, 3, padding=1)
    with torch.no_grad():
        layer(_input(1, 4, 6, 6))
        layer.weight = nn.Parameter(torch.ones_like(layer.weight))
        x = _input(3, 4, 5, 7)  # another batch and size too
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)


def test_gradients_and_disabled_cache_use_torch_forward(monkeypatch):
    layer = _conv(4, 4, 3, padding=1)
    x = _input(1, 4, 6, 6).requires_grad_()
    out = layer(x)  # grad mode, trainable parameters: torch's forward and its backward
    assert cpu_conv.packed_bytes(layer) == 0
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    monkeypatch.setenv(cpu_conv.ENV_VAR, "0")
    with torch.no_grad():
        assert not cpu_conv.eligible(layer, x.detach())
        assert torch.equal(layer(x.detach()), _reference(layer, x.detach()))


def test_release_frees_the_packed_copies():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 3, padding=1))
    assert use_fast_kernels(model) == 2
    with torch.no_grad():
        model(_input(1, 4, 8, 8))
    held = cpu_conv.packed_bytes(model)
    assert held == (8 * 4 * 9 + 4 * 8 * 9) * 4
    assert release_kernel_caches(model) == held
    assert cpu_conv.packed_bytes(model) == 0


def test_model_manager_offload_releases_packed_weights():
    from engine.memory.devices import DeviceInfo
    from engine.memory.manager import ModelManager

    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
    manager = ModelManager(DeviceInfo.cpu())
    handle = manager.register(model, name="conv")
    with manager.use(handle) as module, torch.no_grad():
        module(_input(1, 4, 8, 8))
    assert cpu_conv.packed_bytes(model) > 0
    manager.offload(handle)
    assert cpu_conv.packed_bytes(model) == 0


def test_frozen_weight_training_uses_torch_convolution():
    """LoRA training's base layers (weight frozen, activations need gradients): torch's forward and
    backward, no packed copy (it bought no speed in training and cost memory)."""
    layer = _conv(6, 8, 3, padding=1, stride=2).requires_grad_(False)
    x = _input(2, 6, 9, 9).requires_grad_()
    assert not cpu_conv.eligible(layer, x)
    layer(x).sum().backward()
    assert cpu_conv.packed_bytes(layer) == 0 and x.grad is not None


def test_weights_made_in_inference_mode_are_packed():
    """Inference tensors have no version counter (a model built under inference_mode, as benchmarks do)."""
    with torch.inference_mode():
        layer = _conv(4, 4, 3, padding=1)
        layer.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        assert layer.weight.is_inference()
        x = _input(1, 4, 6, 6)
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)
        assert cpu_conv.packed_bytes(layer) > 0
