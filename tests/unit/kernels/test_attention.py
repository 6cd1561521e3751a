"""kernels.attention: torch's scaled_dot_product_attention computed in oneDNN query blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import attention as attention_module
from engine.kernels.attention import attention


def _qkv(batch, heads, queries, keys, d, d_v=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, heads, queries, d, generator=g),
        torch.randn(batch, heads, keys, d, generator=g),
        torch.randn(batch, heads, keys, d_v or d, generator=g),
    )


@pytest.mark.parametrize(
    ("batch", "heads", "queries", "keys", "d", "d_v"),
    [(2, 3, 50, 50, 16, None), (1, 2, 64, 7, 8, None), (2, 1, 33, 40, 12, 20)],
)
def test_matches_sdpa(gemm_library, batch, heads, queries, keys, d, d_v):
    gemm_library("onednn")
    q, k, v = _qkv(batch, heads, queries, keys, d, d_v)
    torch.testing.assert_close(
        attention(q, k, v), F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5
    )


def test_several_query_blocks_and_a_ragged_last_one(gemm_library, monkeypatch):
    """With 128 scores per block and 40 keys a block holds 3 queries: 50 queries are 16 blocks and 2 left."""
    gemm_library("onednn")
    monkeypatch.setattr(attention_module, "_SCORES_PER_BLOCK", 128)
    q, k, v = _qkv(1, 2, 50, 40, 8)
    torch.testing.assert_close(
        attention(q, k, v), F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5
    )


def test_explicit_scale_and_strided_views(gemm_library):
    gemm_library("onednn")
    q, k, v = _qkv(2, 4, 30, 30, 8)
    # (B, N, heads, d) -> (B, heads, N, d) views, as the models pass them
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not q.is_contiguous()
    got = attention(q, k, v, scale=0.3)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, scale=0.3), rtol=1e-5, atol=1e-5)


def test_mask_gradients_and_other_dtypes_use_torch_kernel(gemm_library):
    gemm_library("onednn")
    q, k, v = _qkv(1, 2, 6, 6, 4)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    qd, kd, vd = (t.double() for t in (q, k, v))
    assert torch.equal(attention(qd, kd, vd), F.scaled_dot_product_attention(qd, kd, vd))
    qg = q.clone().requires_grad_()
    attention(qg, k, v).sum().backward()  # torch's kernel has the backward
    assert qg.grad is not None and qg.grad.shape == q.shape


def test_blas_choice_is_torch_kernel_exactly(gemm_library):
    gemm_library("blas")
    q, k, v = _qkv(1, 2, 20, 20, 8)
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
