"""Progress and interrupts for code that has no `context` parameter: ComfyUI's `comfy.utils.ProgressBar`
and `comfy.model_management`'s interrupt functions, on the running node's ExecutionContext.

ComfyUI keeps one global interrupt flag; here the flag is the running prompt's (the executor gives every
node's context the prompt's InterruptFlag), so an interrupt reaches exactly the prompt that is running.
Outside a node (a pack calling these at import time, a helper thread) there is nothing to report to or
interrupt: reporting does nothing, and the interrupt is remembered until a node checks for it.
"""

from __future__ import annotations

import threading
from typing import Any

from engine.comfy_compat.binding import current_or_none
from engine.errors import ExecutionInterrupted
from engine.execution.context import ExecutionContext, running_context


class InterruptProcessingException(ExecutionInterrupted):
    """ComfyUI's `comfy.model_management.InterruptProcessingException`. A subclass of diffgraph's
    interrupt, so the executor reports the prompt interrupted (not failed) and packs that catch
    ComfyUI's name catch it."""


def _pending() -> threading.Event:
    """Interrupt requests made outside any node, applied to the next check (ComfyUI's global flag behaves
    so: set between nodes, it stops the next check). Kept per runtime binding, not per process."""
    binding = current_or_none()
    if binding is None:
        return threading.Event()  # no runtime: nothing will ever check it
    event = binding.state.get("pending_interrupt")
    if event is None:
        event = binding.state["pending_interrupt"] = threading.Event()
    return event


def request_interrupt(value: bool = True) -> None:
    """ComfyUI's interrupt_current_processing(value): set (or with False, clear) the interrupt."""
    context = running_context()
    if value:
        if context is not None:
            context.request_interrupt(True)
        else:
            _pending().set()
    else:
        _pending().clear()
        if context is not None:
            context.request_interrupt(False)


def is_interrupted() -> bool:
    context = running_context()
    if context is not None and context.interrupted:
        return True
    return _pending().is_set()


def raise_if_interrupted() -> None:
    """ComfyUI's throw_exception_if_processing_interrupted: raises InterruptProcessingException (and
    clears a pending request, as ComfyUI clears its flag when it raises)."""
    if _pending().is_set():
        _pending().clear()
        raise InterruptProcessingException("processing was interrupted")
    context = running_context()
    if context is not None and context.interrupted:
        raise InterruptProcessingException("execution was interrupted")


def preview_image(preview: Any) -> Any:
    """The PIL image of ComfyUI's preview tuple ("JPEG", image, max_size), or of an image itself,
    shrunk to max_size when one is given."""
    if preview is None:
        return None
    if isinstance(preview, tuple | list) and len(preview) >= 2:
        image, max_size = preview[1], (preview[2] if len(preview) > 2 else None)
        if max_size and hasattr(image, "thumbnail") and max(image.size) > max_size:
            image = image.copy()
            image.thumbnail((max_size, max_size))
        return image
    return preview


def report_progress(
    value: float, total: float, preview: Any = None, context: ExecutionContext | None = None
) -> None:
    """Report value/total for `context` (default: the running node; no-op outside a node); the preview
    is rendered only when the event sink shows previews. Raises the interrupt when the prompt was
    interrupted."""
    context = context or running_context()
    if context is None:
        return
    if _pending().is_set():
        _pending().clear()
        raise InterruptProcessingException("processing was interrupted")
    image = preview_image(preview)
    context.progress(int(value), int(total), (lambda: image) if image is not None else None)
