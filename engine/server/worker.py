"""The prompt queue and the one worker thread that executes prompts in order.

Order is ComfyUI's: by `number` (ascending; `front` queues with a negative number so it goes first), then
by arrival. The queue lives in memory for speed and is mirrored to the SQLite store on every change, so
a restart finds it again (see store.py for the restart semantics).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import WorkflowFormatError, WorkflowValidationError
from engine.execution.context import InterruptFlag
from engine.graph.api_format import parse_api_workflow
from engine.graph.validate import ValidatedWorkflow, validate_workflow
from engine.runtime import MODEL_MANAGER, Runtime
from engine.server.config import ServerConfig
from engine.server.protocol import ClientHub, PromptReporter
from engine.server.store import PromptStore, QueuedPrompt

log = logging.getLogger("diffgraph.server.queue")
# Pauses before the worker tries a failed store write again.
WRITE_RETRY_PAUSES_S = (0.05, 0.5, 2.0)


def _now_ms() -> int:
    return int(time.time() * 1000)


def history_entry(
    item: QueuedPrompt, status: str, messages: list[list[Any]], outputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """ComfyUI's history item: the queue tuple, the UI outputs per node, status with timestamped messages."""
    outputs = outputs or {}
    return {
        "prompt": item.as_comfy(),
        "outputs": outputs,
        "status": {"status_str": status, "completed": status == "success", "messages": messages},
        "meta": {
            node_id: {
                "node_id": node_id,
                "display_node": node_id,
                "parent_node": None,
                "real_node_id": node_id,
            }
            for node_id in outputs
        },
    }


@dataclass
class Submission:
    """What a POST /prompt asks for, checked (the workflow itself is validated separately)."""

    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    prompt_id: str
    number: float | None = None  # None: the next number (negated with `front`, like ComfyUI)
    front: bool = False
    targets: list[str] | None = None


class PromptQueue:
    """Pending prompts, the running one, and the worker thread that runs them through the executor."""

    def __init__(self, runtime: Runtime, store: PromptStore, hub: ClientHub, config: ServerConfig):
        self.runtime = runtime
        self.store = store
        self.hub = hub
        self.config = config
        self.interrupt = InterruptFlag()
        self._cond = threading.Condition()
        self._heap: list[tuple[tuple[float, int], QueuedPrompt]] = []
        self._validated: dict[str, ValidatedWorkflow] = {}
        self._running: QueuedPrompt | None = None
        self._reporter: PromptReporter | None = None
        self._stopping = False
        self._free_flags: dict[str, bool] = {}
        self._thread: threading.Thread | None = None
        self.counter, self._seq = store.next_numbers()

    # -- start-up and shutdown ---------------------------------------------------------------------

    def recover(self) -> None:
        """Reload the persisted queue: pending prompts are queued again (after re-validation against the
        nodes loaded now), a prompt that was running when the process died goes to the history as
        interrupted."""
        pending, was_running = self.store.load_queue()
        for item in was_running:
            message: dict[str, Any] = {
                "prompt_id": item.prompt_id,
                "node_id": None,
                "node_type": None,
                "executed": [],
                "timestamp": _now_ms(),
                "reason": "the server stopped while this prompt was running; it was not re-run",
            }
            self.store.finish(
                item.prompt_id, history_entry(item, "interrupted", [["execution_interrupted", message]])
            )
            log.warning(
                "prompt was running when the server stopped; marked interrupted",
                extra={"prompt_id": item.prompt_id},
            )
        for item in pending:
            try:
                validated = self.validate(item.prompt, item.targets or None)
            except (WorkflowFormatError, WorkflowValidationError) as exc:
                error = {"prompt_id": item.prompt_id, "exception_message": str(exc), "timestamp": _now_ms()}
                self.store.finish(item.prompt_id, history_entry(item, "error", [["execution_error", error]]))
                log.warning(
                    "queued prompt no longer valid after restart", extra={"prompt_id": item.prompt_id}
                )
                continue
            self._push(item, validated)
            self._seq = max(self._seq, item.seq + 1)
        if pending or was_running:
            log.info("queue restored", extra={"pending": len(self._heap), "interrupted": len(was_running)})

    def validate(self, prompt: Any, targets: list[str] | None) -> ValidatedWorkflow:
        workflow = parse_api_workflow(prompt)
        # Partial, as ComfyUI queues a prompt: the valid outputs run, the failed ones' errors are answered.
        return validate_workflow(workflow, self.runtime.registry, targets, partial=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="diffgraph-worker", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop taking prompts; let the running one finish for `grace_s`, then interrupt it and wait for
        the executor to unwind. Pending prompts stay in the store for the next start."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            return
        thread.join(grace)
        if thread.is_alive():
            log.info("interrupting the running prompt for shutdown")
            self.interrupt.set()
            thread.join(30)

    # -- queue operations (any thread; the store's writes run on the store thread) -------------------
    # Each operation that writes the store runs whole on the store thread (`store.run`), so store writes
    # and in-memory changes happen in one order, and no thread ever waits for the store while holding
    # `_cond` (the store thread itself runs the SQL directly).

    def submit(self, validated: ValidatedWorkflow, sub: Submission) -> float:
        """Queue a validated prompt: persisted first, then visible to the worker. DuplicatePromptId when
        the id is queued, running or in the history; a failed store write queues nothing."""
        return self.store.run(self._submit, validated, sub)

    def _submit(self, validated: ValidatedWorkflow, sub: Submission) -> float:
        prompt_id, number = sub.prompt_id, sub.number
        if self._knows(prompt_id):
            raise DuplicatePromptId(f"prompt_id {prompt_id!r} is already queued or in the history")
        # `counter` and `_seq` change only here, on the store thread, so no other submission interleaves;
        # the write happens outside `_cond`, which the event loop takes too (it must not wait on the disk).
        counter = self.counter
        if number is None:
            number = -counter if sub.front else counter
            counter += 1
        item = QueuedPrompt(number, prompt_id, sub.prompt, sub.extra_data, list(validated.targets), self._seq)
        self.store.add(item, counter)  # raises on failure: nothing changed in memory
        with self._cond:
            self.counter = counter
            self._seq += 1
            self._push(item, validated)
            self._cond.notify_all()
        self.post_status()
        log.info(
            "prompt queued", extra={"prompt_id": prompt_id, "number": number, "nodes": len(validated.order)}
        )
        return number

    def _push(self, item: QueuedPrompt, validated: ValidatedWorkflow) -> None:
        heapq.heappush(self._heap, (item.sort_key, item))
        self._validated[item.prompt_id] = validated

    def _knows(self, prompt_id: str) -> bool:
        with self._cond:
            queued = prompt_id in self._validated or (
                self._running is not None and self._running.prompt_id == prompt_id
            )
        return queued or self.store.history_item(prompt_id) is not None

    def remaining(self) -> int:
        with self._cond:
            return len(self._heap) + (1 if self._running is not None else 0)

    def status(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.remaining()}}

    def post_status(self) -> None:
        self.hub.post("status", {"status": self.status()})

    def snapshot(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """(queue_running, queue_pending) as ComfyUI's GET /queue lists them."""
        with self._cond:
            running = [self._running.as_comfy()] if self._running is not None else []
            pending = [item.as_comfy() for _, item in sorted(self._heap, key=lambda pair: pair[0])]
        return running, pending

    def current(self) -> tuple[str | None, str, str | None] | None:
        """(client id, prompt id, node id) of the running prompt, for a reconnecting client."""
        with self._cond:
            item, reporter = self._running, self._reporter
        if item is None or reporter is None:
            return None
        return (item.extra_data.get("client_id"), item.prompt_id, reporter.current_node)

    def delete(self, prompt_ids: list[str]) -> int:
        """Remove pending prompts (a running one is not touched: use /interrupt)."""
        return self.store.run(self._delete, set(prompt_ids))

    def clear(self) -> int:
        return self.store.run(self._delete, None)

    def _delete(self, wanted: set[str] | None) -> int:
        with self._cond:  # out of the heap first, so the worker cannot start them meanwhile
            removed = [item for _, item in self._heap if wanted is None or item.prompt_id in wanted]
            ids = {item.prompt_id for item in removed}
            self._heap = [(k, item) for k, item in self._heap if item.prompt_id not in ids]
            heapq.heapify(self._heap)
            validated = {item.prompt_id: self._validated.pop(item.prompt_id) for item in removed}
        if not removed:
            return 0
        try:
            self.store.remove(sorted(ids))  # outside `_cond`, see _submit
        except BaseException:
            with self._cond:  # not deleted after all: back in the queue as they were
                for item in removed:
                    self._push(item, validated[item.prompt_id])
                self._cond.notify_all()
            raise
        self.post_status()
        return len(removed)

    def interrupt_running(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is `prompt_id`, when given)."""
        with self._cond:
            running = self._running
            if running is None or (prompt_id is not None and running.prompt_id != prompt_id):
                return False
            self.interrupt.set()
        log.info("interrupt requested", extra={"prompt_id": running.prompt_id})
        return True

    def request_free(self, *, unload_models: bool, free_memory: bool) -> None:
        """Like ComfyUI, freeing happens on the worker between prompts, never under a running model."""
        with self._cond:
            if unload_models:
                self._free_flags["unload_models"] = True
            if free_memory:
                self._free_flags["free_memory"] = True
            self._cond.notify_all()

    # -- the worker thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._heap and not self._free_flags:
                    self._cond.wait()
                if self._stopping:
                    return
                flags, self._free_flags = self._free_flags, {}
                item = heapq.heappop(self._heap)[1] if self._heap else None
                validated = self._validated.pop(item.prompt_id) if item is not None else None
                if item is not None:
                    self._running = item
                    self.interrupt.clear()
                    self._reporter = PromptReporter(
                        self.hub,
                        item.prompt_id,
                        item.extra_data.get("client_id"),
                        self.config.preview_format,
                        self.config.preview_max_size,
                    )
            if flags:
                self._free(flags)
            if item is not None and validated is not None:
                self._run(item, validated)

    def _free(self, flags: dict[str, bool]) -> None:
        manager = self.runtime.services.get(MODEL_MANAGER)
        if manager is None:
            return
        try:
            figures = manager.free(
                unload_models=flags.get("unload_models", False), free_memory=flags.get("free_memory", False)
            )
            log.info("memory freed", extra=figures)
        except Exception:
            log.exception("freeing memory failed")

    def _run(self, item: QueuedPrompt, validated: ValidatedWorkflow) -> None:
        reporter = self._reporter
        assert reporter is not None
        started = time.perf_counter()
        # Marked running before it runs, so a crash mid-run is never followed by a second run after the
        # restart; a prompt that cannot be marked is not run at all.
        if self._persist("mark the prompt running", item.prompt_id, self.store.mark_running, item.prompt_id):
            status, outputs = self._execute(item, validated, reporter)
        else:
            reporter(_executor_failure(item.prompt_id, RuntimeError("the queue file could not be written")))
            status, outputs = "error", {}
        entry = history_entry(item, status, reporter.messages, outputs)
        self._persist("write the history entry", item.prompt_id, self.store.finish, item.prompt_id, entry)
        with self._cond:
            self._running = None
            self._reporter = None
        # After the history is written, so a client reacting to `executing: null` finds it.
        reporter.finished()
        self.post_status()
        log.info(
            "prompt finished",
            extra={
                "prompt_id": item.prompt_id,
                "status": status,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    def _execute(
        self, item: QueuedPrompt, validated: ValidatedWorkflow, reporter: PromptReporter
    ) -> tuple[str, dict[str, Any]]:
        log.info("prompt started", extra={"prompt_id": item.prompt_id})
        try:
            result = self.runtime.executor.execute(
                validated,
                prompt_id=item.prompt_id,
                sink=reporter,
                interrupt=self.interrupt,
                extra_data=item.extra_data,
            )
            return result.status, result.ui_outputs
        except Exception as exc:  # an executor failure (not a node's): record it, keep serving
            log.exception("executor failed", extra={"prompt_id": item.prompt_id})
            reporter(_executor_failure(item.prompt_id, exc))
            return "error", {}

    def _persist(self, what: str, prompt_id: str, write: Callable[..., None], *args: Any) -> bool:
        """A store write from the worker, tried again after a pause when it fails (a busy or briefly
        failing disk must not lose a finished prompt's history). Each try is its own transaction."""
        for attempt, pause in enumerate((0.0, *WRITE_RETRY_PAUSES_S)):
            time.sleep(pause)
            try:
                write(*args)
                return True
            except Exception:
                log.exception(f"could not {what}", extra={"prompt_id": prompt_id, "attempt": attempt + 1})
        return False


class DuplicatePromptId(ValueError):
    """A prompt_id that is already queued, running or in the history."""


def _executor_failure(prompt_id: str, exc: BaseException) -> Any:
    from engine.execution.events import ExecutionFailed

    return ExecutionFailed(
        prompt_id,
        "",
        "",
        f"internal error while executing the prompt: {exc}",
        type(exc).__name__,
        traceback.format_exception(type(exc), exc, exc.__traceback__),
    )
