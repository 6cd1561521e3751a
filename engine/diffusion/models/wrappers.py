"""Wrapper chains around model calls, registered in ``transformer_options["wrappers"]`` (ComfyUI's
patcher-extension layout: ``{kind: {key: [wrapper, ...]}}``, kinds such as "apply_model" and
"diffusion_model"). A wrapper is ``fn(executor, *args, **kwargs)``; calling ``executor(*args, **kwargs)``
runs the next wrapper, or the wrapped function after the last; ``executor.class_obj`` is the object whose
method is wrapped. The first registered wrapper is the outermost."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class WrapperExecutor:
    def __init__(self, original: Callable[..., Any], class_obj: Any, wrappers: list[Any], idx: int) -> None:
        self.original = original
        self.class_obj = class_obj
        self.wrappers = list(wrappers)
        self.idx = idx
        self.is_last = idx == len(wrappers)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.idx + 1 > len(self.wrappers):
            raise RuntimeError("wrapper executor called past its last wrapper")
        return type(self)(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    @classmethod
    def new_executor(cls, original: Callable[..., Any], wrappers: list[Any], idx: int = 0) -> WrapperExecutor:
        return cls(original, None, wrappers, idx)

    @classmethod
    def new_class_executor(
        cls, original: Callable[..., Any], class_obj: Any, wrappers: list[Any], idx: int = 0
    ) -> WrapperExecutor:
        return cls(original, class_obj, wrappers, idx)


def wrappers_of(kind: str, transformer_options: Mapping[str, Any] | None) -> list[Any]:
    """Every wrapper of ``kind`` in the options, in registration order (all keys)."""
    if not transformer_options:
        return []
    by_key = (transformer_options.get("wrappers") or {}).get(kind) or {}
    return [fn for fns in by_key.values() for fn in fns]


def call_wrapped(
    kind: str,
    transformer_options: Mapping[str, Any] | None,
    original: Callable[..., Any],
    class_obj: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``original(*args, **kwargs)`` inside the wrappers of ``kind``."""
    wrappers = wrappers_of(kind, transformer_options)
    if not wrappers:
        return original(*args, **kwargs)
    return WrapperExecutor.new_class_executor(original, class_obj, wrappers).execute(*args, **kwargs)
