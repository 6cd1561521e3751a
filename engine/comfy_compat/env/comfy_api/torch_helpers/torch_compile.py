"""torch.compile a MODEL's diffusion model (or other attributes of its base model) for sampling: the compiled
modules are swapped in by an APPLY_MODEL wrapper for the duration of each model call, as ComfyUI does, so the
MODEL object itself keeps its plain modules (and its clones are unaffected)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.utils
import torch
from comfy.patcher_extension import WrappersMP

COMPILE_KEY = "torch.compile"
TORCH_COMPILE_KWARGS = "torch_compile_kwargs"


def apply_torch_compile_factory(compiled_module_dict: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    def apply_torch_compile_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
        originals = {key: comfy.utils.get_attr(executor.class_obj, key) for key in compiled_module_dict}
        try:
            for key, module in compiled_module_dict.items():
                comfy.utils.set_attr(executor.class_obj, key, module)
            return executor(*args, **kwargs)
        finally:
            for key, module in originals.items():
                comfy.utils.set_attr(executor.class_obj, key, module)

    return apply_torch_compile_wrapper


def set_torch_compile_wrapper(
    model: Any,
    backend: str,
    options: dict[str, str] | None = None,
    mode: str | None = None,
    fullgraph: bool = False,
    dynamic: bool | None = None,
    keys: list[str] | None = None,
    *args: Any,
    **kwargs: Any,
) -> None:
    """Compile `keys` (default: the diffusion model) of the MODEL's base model with torch.compile."""
    model.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    compile_kwargs: dict[str, Any] = {
        "backend": backend,
        "options": options,
        "mode": mode,
        "fullgraph": fullgraph,
        "dynamic": dynamic,
    }
    compiled = {
        key: torch.compile(model=model.get_model_object(key), **compile_kwargs)
        for key in keys or ["diffusion_model"]
    }
    model.add_wrapper_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY, apply_torch_compile_factory(compiled))
    model.model_options[TORCH_COMPILE_KWARGS] = compile_kwargs
