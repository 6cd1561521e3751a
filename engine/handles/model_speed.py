"""MODEL clones that run faster: step caching (EasyCache / LazyCache) and torch.compile.

The mechanisms live in engine.diffusion (sampling.step_cache, compiling); these functions attach them to a
clone of a MODEL handle the way the nodes need, so that node code goes through engine.api only."""

from __future__ import annotations

from typing import Any

from engine.diffusion.compiling import CompileSettings
from engine.diffusion.sampling.step_cache import OPTIONS_KEY, StepCache, easycache_wrapper, lazycache_wrapper
from engine.handles.comfy_surface.extension import add_wrapper_with_key

# kind -> (wrapper point, wrapper): EasyCache wraps the network call, LazyCache the whole guided prediction
_STEP_CACHES = {
    "EasyCache": ("diffusion_model", easycache_wrapper),
    "LazyCache": ("predict_noise", lazycache_wrapper),
}


def with_step_cache(
    model: Any, name: str, threshold: float, start_percent: float, end_percent: float, verbose: bool
) -> Any:
    """A clone of `model` with the step cache `name` ("EasyCache" or "LazyCache") between start_percent
    and end_percent of its schedule (converted to sigmas with the model's own sampling)."""
    point, wrapper = _STEP_CACHES[name]
    m = model.clone()
    ms = m.model_sampling
    cache = StepCache(
        name, threshold, ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent), verbose
    )
    m.model_options.setdefault("transformer_options", {})[OPTIONS_KEY] = cache
    add_wrapper_with_key(point, name.lower(), wrapper, m.model_options, is_model_options=True)
    return m


def with_compile(model: Any, backend: str) -> Any:
    """A clone of `model` whose diffusion network runs through torch.compile with `backend`."""
    m = model.clone()
    m.compile_settings = CompileSettings(backend=backend)
    return m


__all__ = ["with_compile", "with_step_cache"]
