"""Faster MODEL clones for node code: step caching (EasyCache / LazyCache) and torch.compile."""

from __future__ import annotations

from engine.handles.model_speed import with_compile, with_step_cache

__all__ = ["with_compile", "with_step_cache"]
