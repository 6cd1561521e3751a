"""The kernel tests force a GEMM library and put the process's choice back afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.kernels import cpu_gemm


@pytest.fixture
def gemm_library(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Call with "onednn" or "blas" to force that library for the test; the choice is reset after it.
    Forcing oneDNN also lifts the small-product cut-off, so the tests' small tensors take that path."""

    def force(choice: str) -> None:
        if choice == "onednn" and not cpu_gemm.onednn_available():
            pytest.skip("this torch build has no oneDNN linear kernel")
        cpu_gemm.set_backend(choice)
        if choice == "onednn":
            monkeypatch.setattr(cpu_gemm, "_MIN_FLOPS", 0)

    yield force
    cpu_gemm.set_backend(None)
