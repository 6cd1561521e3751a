"""What a running node can reach: progress reporting, interrupt checks, folders and the runtime's services.

Services are objects the runtime creates at start-up (engine/runtime.py) and the executor hands to every
context; nodes reach them through the named accessors below (`context.models`, `context.folders`,
`context.samplers`), never through module globals. This layer does not import the model stack, so the
accessors are typed `Any` here; engine.api documents what each one is.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any

from engine.errors import ExecutionInterrupted
from engine.execution.events import EventSink, NodeProgress

# Names of the runtime services in `ExecutionContext.services` (and `Executor(services=...)`).
FOLDERS = "folders"  # engine.folders.Folders
DEVICE = "device"  # engine.memory.devices.DeviceInfo
MODEL_MANAGER = "model_manager"  # engine.memory.manager.ModelManager
SAMPLERS = "samplers"  # engine.handles.sampling.SamplingLibrary
PREVIEWER = "previewer"  # engine.diffusion.sampling.previewers.LatentPreviewer (--preview-method)


class InterruptFlag:
    """Cooperative interrupt: set from any thread, checked between nodes and at every progress report."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise ExecutionInterrupted("execution was interrupted")


class ExecutionContext:
    """Passed to node functions that declare a `context` parameter.

    `services` holds runtime objects the app provides (folders, model manager, ...) by name; nodes use
    the accessors (`folders`, `models`, `device`, `samplers`).
    """

    def __init__(
        self,
        *,
        prompt_id: str,
        node_id: str,
        node_type: str,
        sink: EventSink,
        interrupt: InterruptFlag,
        services: Mapping[str, Any],
    ):
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self._sink = sink
        self._interrupt = interrupt
        self.services = services

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report progress (e.g. sampling step value of total); raises ExecutionInterrupted if asked to stop.

        `preview` is an image (PIL, or an IMAGE-like array) or a zero-argument function making one; the
        function is called only when the sink shows previews (`wants_previews`), so a run whose sink
        does not (the CLI) never renders them.
        """
        self._interrupt.raise_if_set()
        if callable(preview):
            preview = self._render_preview(preview) if self.wants_previews else None
        self._sink(NodeProgress(self.prompt_id, self.node_id, int(value), int(total), preview))

    def _render_preview(self, preview: Any) -> Any:
        # The runtime's previewer picks TAESD / latent2rgb / nothing for sampler previews.
        render = getattr(self.services.get(PREVIEWER), "render", None)
        return render(preview) if render is not None else preview()

    @property
    def wants_previews(self) -> bool:
        """Whether the event sink shows live previews (a sink says so with `wants_previews = True`)."""
        return bool(getattr(self._sink, "wants_previews", False))

    def check_interrupt(self) -> None:
        self._interrupt.raise_if_set()

    def request_interrupt(self, value: bool = True) -> None:
        """Set (or with False, clear) the running prompt's interrupt flag from inside the node
        (ComfyUI's interrupt_current_processing: packs use it to stop, or to swallow a stop)."""
        if value:
            self._interrupt.set()
        else:
            self._interrupt.clear()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def service(self, name: str) -> Any:
        try:
            return self.services[name]
        except KeyError:
            raise RuntimeError(
                f"node {self.node_id} ({self.node_type}) needs the {name!r} service, which this runtime does not provide"
            ) from None

    @property
    def folders(self) -> Any:
        """The model and input/output folders (engine.folders.Folders)."""
        return self.service(FOLDERS)

    @property
    def models(self) -> Any:
        """The model manager (engine.memory.manager.ModelManager) that loaders register weights with."""
        return self.service(MODEL_MANAGER)

    @property
    def device(self) -> Any:
        """The compute device decided at start-up (engine.memory.devices.DeviceInfo)."""
        return self.service(DEVICE)

    @property
    def samplers(self) -> Any:
        """The runtime's sampling library (engine.handles.sampling.SamplingLibrary): the samplers and
        schedulers every KSampler-like node chooses from, plugins' included."""
        return self.service(SAMPLERS)


# The context of the node running on this thread (or task), for code that cannot take a `context`
# parameter: ComfyUI-classic packs reach progress and interrupts through module functions
# (comfy.utils.ProgressBar, comfy.model_management.throw_exception_if_processing_interrupted).
_RUNNING: ContextVar[ExecutionContext | None] = ContextVar("diffgraph_running_node", default=None)


def running_context() -> ExecutionContext | None:
    """The ExecutionContext of the node being executed here, or None outside a node."""
    return _RUNNING.get()


def enter_node(context: ExecutionContext) -> Token[ExecutionContext | None]:
    """Make `context` the running node's context; hand the token to `leave_node` when the node is done.
    (A token pair rather than a context manager: the executor does this for every node, and a generator
    context manager costs more than the rest of a trivial node's bookkeeping.)"""
    return _RUNNING.set(context)


def leave_node(token: Token[ExecutionContext | None]) -> None:
    _RUNNING.reset(token)
