"""fp32 matrix multiplies on the CPU through the faster of two libraries, chosen by measuring both.

torch's CPU ``linear``/``matmul`` call the BLAS it links (MKL on x86 builds). On CPUs that MKL does not
dispatch its best code path for (AMD EPYC here: AVX-512 present, yet sgemm runs at about half the speed of
oneDNN's on the same cores) oneDNN, which torch also ships (``torch.ops.mkldnn._linear_pointwise``, the
kernel inductor's CPU freezing passes use), does the same fp32 product about twice as fast. Both are
ordinary fp32 with fp32 accumulation (no reduced-precision modes): results differ only in summation
order, ~1e-6 relative.

The choice is made once per process, lazily (the first eligible call), by timing one mid-sized product
with each; ``DIFFGRAPH_CPU_GEMM=onednn|blas|auto`` overrides it. Where oneDNN is not the faster library
(or is absent) everything goes through torch's own ``F.linear`` untouched.

`linear(x, weight, bias)` is a drop-in for ``F.linear``: same shapes, same autograd (a custom Function
whose backward also runs through oneDNN: grad_input = grad @ W, grad_weight = grad^T @ x). Calls that are
not plain fp32 CPU tensors (CUDA, half precision, tensor subclasses, meta/fake tensors while tracing)
go to ``F.linear``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ENV_VAR = "DIFFGRAPH_CPU_GEMM"
CHOICES = ("auto", "onednn", "blas")
# oneDNN must win the calibration by this margin; a tie keeps torch's default path.
_MIN_GAIN = 0.9
# Below ~4 MFLOP a product costs oneDNN ~8 us more call overhead than torch's BLAS call (measured: 64^3
# 13.5 vs 5.5 us, 256x64x256 28 vs 40 us): small products stay with torch.
_MIN_FLOPS = 4_000_000

_lock = threading.Lock()
_backend: str | None = None


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # oneDNN reads a dense weight or its transpose at full speed, any other strides (a slice of a larger
    # matrix) through a reference path hundreds of times slower: such a weight is copied first.
    if not (weight.is_contiguous() or weight.t().is_contiguous()):
        weight = weight.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _best_seconds(fn: Any, repeats: int = 3) -> float:
    fn()  # first call: allocations, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _calibrate() -> str:
    """Time a (512 x 1024) @ (1024 x 1024) fp32 product (~1 GFLOP, a few ms) with both libraries."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1024, generator=generator)
    w = torch.randn(1024, 1024, generator=generator)
    with torch.no_grad():
        try:
            difference = (_onednn(x, w, None) - F.linear(x, w)).abs().max().item()
        except RuntimeError as exc:  # a torch build whose oneDNN lacks the op for this CPU
            log.info("oneDNN linear unavailable (%s): CPU matrix multiplies use torch's BLAS", exc)
            return "blas"
        if not difference < 1e-3:  # 1024-term fp32 sums of N(0,1) products: ~1e-5 apart
            log.warning("oneDNN linear disagrees with BLAS (max difference %g): using BLAS", difference)
            return "blas"
        blas = _best_seconds(lambda: F.linear(x, w))
        onednn = _best_seconds(lambda: _onednn(x, w, None))
    choice = "onednn" if onednn < _MIN_GAIN * blas else "blas"
    log.info("CPU fp32 GEMM: BLAS %.2f ms, oneDNN %.2f ms -> %s", blas * 1e3, onednn * 1e3, choice)
    return choice


def backend() -> str:
    """ "onednn" or "blas": the library fp32 CPU linears use in this process (measured on first call)."""
    global _backend
    if _backend is None:
        with _lock:
            if _backend is None:
                requested = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
                if requested not in CHOICES:
                    raise ValueError(f"{ENV_VAR}={requested!r}: expected one of {', '.join(CHOICES)}")
                if not onednn_available():
                    _backend = "blas"
                elif requested == "auto":
                    _backend = _calibrate()
                else:
                    _backend = requested
    return _backend


def set_backend(choice: str | None) -> None:
    """Force a library ("onednn"/"blas"), or None to measure again on the next call (tests, benchmarks)."""
    global _backend
    if choice is not None and choice not in ("onednn", "blas"):
        raise ValueError(f"unknown CPU GEMM backend {choice!r}: expected 'onednn' or 'blas'")
    if choice == "onednn" and not onednn_available():
        raise RuntimeError("this torch build has no oneDNN linear kernel")
    with _lock:
        _backend = choice


def plain_fp32_cpu(t: torch.Tensor | None) -> bool:
    """None, or an ordinary fp32 CPU tensor/Parameter (no subclass: quantised, fake or traced tensors)."""
    return t is None or (
        type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" and t.dtype == torch.float32
    )


def eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `linear` would route this call through oneDNN."""
    return (
        plain_fp32_cpu(x)
        and plain_fp32_cpu(weight)
        and plain_fp32_cpu(bias)
        and x.dim() >= 2
        and weight.dim() == 2
        and x.shape[-1] == weight.shape[1]
        and x.numel() > 0
        and 2 * x.numel() * weight.shape[0] >= _MIN_FLOPS
        and not torch.compiler.is_compiling()
        and backend() == "onednn"
    )


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with forward and backward products in oneDNN (autograd does not know the op)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x is only needed for the weight's gradient: frozen weights (LoRA training) do not keep it alive.
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad, weight.t(), None)  # grad @ W, W^T read in place (no copy)
        if ctx.needs_input_grad[1]:
            flat_grad = grad.reshape(-1, grad.shape[-1])
            flat_x = x.reshape(-1, x.shape[-1])
            grad_w = _onednn(flat_grad.t(), flat_x.t(), None)  # grad^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through the faster CPU library (see the module docstring); identical call contract."""
    if not eligible(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return _OneDNNLinear.apply(x, weight, bias)
    return _onednn(x, weight, bias)
