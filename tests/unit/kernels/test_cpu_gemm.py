"""cpu_gemm.linear: the same numbers and gradients as F.linear through oneDNN, and F.linear where not eligible."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.kernels import cpu_gemm
from engine.kernels.layers import FastLinear, use_fast_kernels


def _data(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(7, 48), (2, 13, 48), (2, 3, 5, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_matches_f_linear(gemm_library, shape, with_bias):
    gemm_library("onednn")
    x, w = _data(*shape), _data(24, 48, seed=1) * 0.1
    b = _data(24, seed=2) if with_bias else None
    assert cpu_gemm.eligible(x, w, b)
    out = cpu_gemm.linear(x, w, b)
    assert out.shape == (*shape[:-1], 24)
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_onednn_linear_reads_strided_inputs(gemm_library):
    gemm_library("onednn")
    x = _data(48, 10).t()  # (10, 48), not contiguous
    w = _data(48, 24, seed=1).t()  # (24, 48), not contiguous
    assert not x.is_contiguous() and not w.is_contiguous()
    torch.testing.assert_close(cpu_gemm.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_onednn_gradients_match_autograd_of_f_linear(gemm_library):
    gemm_library("onednn")
    x0, w0, b0 = _data(2, 9, 32), _data(16, 32, seed=1) * 0.2, _data(16, seed=2)
    upstream = _data(2, 9, 16, seed=3)

    def grads(fn):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        (fn(x, w, b) * upstream).sum().backward()
        return x.grad, w.grad, b.grad

    ours, reference = grads(cpu_gemm.linear), grads(F.linear)
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_input_gradient_is_right(gemm_library):
    """LoRA training's case: the base weight is frozen, only the input needs a gradient."""
    gemm_library("onednn")
    w = _data(16, 32, seed=1)
    x = _data(4, 32).requires_grad_()
    cpu_gemm.linear(x, w).sum().backward()
    assert w.grad is None
    torch.testing.assert_close(x.grad, w.sum(0).expand(4, 32), rtol=1e-5, atol=1e-5)


def test_works_inside_activation_checkpointing(gemm_library):
    gemm_library("onednn")
    layer = FastLinear(32, 32)
    x = _data(3, 32).requires_grad_()
    checkpoint(lambda t: torch.relu(layer(t)), x, use_reentrant=False).sum().backward()
    grad_checkpointed = x.grad.clone()
    x.grad = None
    torch.relu(F.linear(x, layer.weight, layer.bias)).sum().backward()
    torch.testing.assert_close(grad_checkpointed, x.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_go_to_f_linear_unchanged(gemm_library, dtype):
    gemm_library("onednn")
    x, w = _data(5, 16).to(dtype), _data(8, 16, seed=1).to(dtype)
    assert not cpu_gemm.eligible(x, w, None)
    assert torch.equal(cpu_gemm.linear(x, w), F.linear(x, w))


def test_small_products_stay_with_torch():
    """Below the cut-off (~4 MFLOP) oneDNN's call overhead outweighs its speed: F.linear, bit for bit."""
    if not cpu_gemm.onednn_available():
        pytest.skip("this torch build has no oneDNN linear kernel")
    cpu_gemm.set_backend("onednn")
    try:
        small_x, small_w = _data(16, 32), _data(32, 32, seed=1)
        assert not cpu_gemm.eligible(small_x, small_w, None)
        assert torch.equal(cpu_gemm.linear(small_x, small_w), F.linear(small_x, small_w))
        assert cpu_gemm.eligible(_data(256, 256), _data(256, 256, seed=1), None)  # 33 MFLOP
    finally:
        cpu_gemm.set_backend(None)


def test_blas_choice_is_exactly_f_linear(gemm_library):
    gemm_library("blas")
    x, w = _data(5, 16), _data(8, 16, seed=1)
    assert not cpu_gemm.eligible(x, w, None)
    assert torch.equal(cpu_gemm.linear(x, w), F.linear(x, w))


def test_shape_mismatch_raises_torch_own_error(gemm_library):
    gemm_library("onednn")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        cpu_gemm.linear(_data(5, 16), _data(8, 12))


def test_environment_variable_forces_or_rejects(monkeypatch):
    cpu_gemm.set_backend(None)
    try:
        monkeypatch.setenv(cpu_gemm.ENV_VAR, "blas")
        assert cpu_gemm.backend() == "blas"
        cpu_gemm.set_backend(None)
        monkeypatch.setenv(cpu_gemm.ENV_VAR, "fastest")
        with pytest.raises(ValueError, match="DIFFGRAPH_CPU_GEMM='fastest'"):
            cpu_gemm.backend()
    finally:
        cpu_gemm.set_backend(None)


def test_calibration_picks_one_library(monkeypatch):
    if not cpu_gemm.onednn_available():
        pytest.skip("this torch build has no oneDNN linear kernel")
    monkeypatch.setenv(cpu_gemm.ENV_VAR, "auto")
    cpu_gemm.set_backend(None)
    try:
        assert cpu_gemm.backend() in ("onednn", "blas")
    finally:
        cpu_gemm.set_backend(None)


def test_use_fast_kernels_switches_plain_linears_only(gemm_library):
    gemm_library("onednn")

    class OwnLinear(nn.Linear):  # a pack's own layer: its forward is its own
        pass

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), OwnLinear(8, 8), nn.Sequential(nn.Linear(8, 4)))
    keys_before = list(model.state_dict())
    x = _data(3, 8)
    before = model(x)
    assert use_fast_kernels(model) == 2
    assert type(model[0]) is FastLinear and type(model[3][0]) is FastLinear
    assert type(model[2]) is OwnLinear
    assert isinstance(model[0], nn.Linear)
    assert list(model.state_dict()) == keys_before
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_model_manager_registration_switches_linears():
    from engine.memory.devices import DeviceInfo
    from engine.memory.manager import ModelManager

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    ModelManager(DeviceInfo.cpu()).register(model, name="stack")
    assert [type(m) for m in model if isinstance(m, nn.Linear)] == [FastLinear, FastLinear]


def test_row_strided_weight_is_read_correctly(gemm_library):
    """A weight sliced out of a wider matrix (row stride > columns) is copied before oneDNN reads it."""
    gemm_library("onednn")
    wide = _data(24, 96, seed=1)
    w = wide[:, :48]
    assert not w.is_contiguous() and not w.t().is_contiguous()
    x = _data(5, 48)
    torch.testing.assert_close(cpu_gemm.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
