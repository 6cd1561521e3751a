"""The body of a worker actor: a full diffgraph runtime (registry with the same packs, model manager,
output cache) that executes prompts and streams their events back.

A plain class: pool.py turns it into a Ray actor (`ray.remote(DiffgraphWorker)`), tests may drive it
directly. `run` is a generator; Ray streams each yielded batch to the server as soon as it is produced
(a streaming generator), so progress and previews arrive while the prompt runs. The actor runs with
several threads (max_concurrency), so `interrupt`, `stats` and `free` are answered while a prompt runs.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import queue
import shutil
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.execution import events as ev
from engine.execution.context import InterruptFlag
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.graph.validate import validate_workflow
from engine.runtime import DEVICE, MODEL_MANAGER, build_runtime
from engine.scaleout.outputs import Staging

# Events queued by the executor thread are sent in batches of at most this many (one Ray object each).
BATCH = 64
_END = object()


@dataclass
class WorkerSpec:
    """How every worker builds its runtime; pickled to each actor. The folders' paths must exist on every
    node of the cluster (docs/scale-out.md): models, input and custom_nodes are read there; output and
    temp are replaced by the worker's own staging folders."""

    folders: Folders
    load_custom_nodes: bool = True
    memory_options: Any = None  # engine.memory.devices.MemoryOptions
    preview_method: str = "auto"
    staging_root: str | None = None  # default: the worker machine's temp folder


class DiffgraphWorker:
    def __init__(self, index: int, spec: WorkerSpec) -> None:
        self.index = index
        staging_root = Path(spec.staging_root or tempfile.gettempdir())
        _remove_stale_staging(staging_root)
        root = staging_root / f"diffgraph-worker-{index}-{os.getpid()}"
        folders = dataclasses.replace(spec.folders, output=root / "output", temp=root / "temp")
        folders.output.mkdir(parents=True, exist_ok=True)
        folders.temp.mkdir(parents=True, exist_ok=True)
        self.runtime = build_runtime(
            folders,
            load_custom_nodes=spec.load_custom_nodes,
            memory_options=spec.memory_options,
            preview_method=spec.preview_method,
        )
        self.staging = Staging(folders)
        self._run_lock = threading.Lock()  # one prompt at a time; free/reset wait for it
        self._state_lock = threading.Lock()
        self._running: tuple[str, InterruptFlag] | None = None
        self._pending_free: dict[str, bool] = {}
        # Interrupts that arrived before their prompt started here (the server forwards them at once).
        self._early_interrupts: deque[str] = deque(maxlen=64)
        self.prompts = 0
        self.recent: deque[str] = deque(maxlen=100)  # prompt ids this worker ran, newest last

    # -- queries -------------------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        """Answered once the constructor finished: the runtime is built, the packs are loaded."""
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Who and where this worker is, what it runs and which model files its model manager holds."""
        # Per model file ("file.safetensors (UNet)": the loaders' naming): held when none of its parts
        # was dropped (weights released, re-read from disk when used), on the device when one part is.
        parts: dict[str, list[Any]] = {}
        manager = self.runtime.services.get(MODEL_MANAGER)
        for model in manager.models if manager is not None else ():
            parts.setdefault(model.name.rsplit(" (", 1)[0], []).append(model)
        held = {f: ms for f, ms in parts.items() if all(m.location.value != "dropped" for m in ms)}
        on_device = {f for f, ms in held.items() if any(m.on_device for m in ms)}
        in_ram = set(held) - on_device
        with self._state_lock:
            running = self._running[0] if self._running is not None else None
        return {
            "index": self.index,
            "pid": os.getpid(),
            "node": platform.node(),
            "device": str(getattr(self.runtime.services.get(DEVICE), "compute_device", "cpu")),
            "running": running,
            "prompts": self.prompts,
            "recent": list(self.recent),
            "models": {"device": sorted(on_device), "ram": sorted(in_ram)},
            "node_types": len(self.runtime.registry),
        }

    # -- control (answered while a prompt runs) --------------------------------------------------

    def interrupt(self, prompt_id: str | None = None) -> bool:
        with self._state_lock:  # one lock with the start of a run: an interrupt is never lost between
            running = self._running
            if running is None or (prompt_id is not None and running[0] != prompt_id):
                if prompt_id is not None:
                    self._early_interrupts.append(prompt_id)
                return False
        running[1].set()
        return True

    def free(self, unload_models: bool = False, free_memory: bool = False) -> dict[str, Any]:
        """POST /free: applied now when idle, else right after the running prompt (never under a model)."""
        with self._state_lock:
            self._pending_free["unload_models"] = (
                self._pending_free.get("unload_models", False) or unload_models
            )
            self._pending_free["free_memory"] = self._pending_free.get("free_memory", False) or free_memory
        if self._run_lock.acquire(blocking=False):
            try:
                self._apply_free()
            finally:
                self._run_lock.release()
        return self.stats()

    def reset(self) -> dict[str, Any]:
        """Forget everything cached and release every model (waits for a running prompt): a known state
        for tests and benchmarks."""
        with self._run_lock:
            self.runtime.executor.cache.clear()
            gc.collect()  # the model manager forgets models once nothing refers to them (weak references)
            manager = self.runtime.services.get(MODEL_MANAGER)
            if manager is not None:
                manager.free(unload_models=True, free_memory=True)
        return self.stats()

    def _apply_free(self) -> None:
        with self._state_lock:
            flags, self._pending_free = self._pending_free, {}
        manager = self.runtime.services.get(MODEL_MANAGER)
        if manager is not None and any(flags.values()):
            manager.free(
                unload_models=flags.get("unload_models", False), free_memory=flags.get("free_memory", False)
            )

    # -- running a prompt ------------------------------------------------------------------------

    def run(
        self, prompt_id: str, prompt: dict[str, Any], targets: list[str] | None, extra_data: dict[str, Any]
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Execute one prompt, yielding batches of ("event", event), ("files", [ShippedFile]) and last
        ("done", status, ui_outputs, stats)."""
        outbox: queue.Queue[Any] = queue.Queue()
        thread = threading.Thread(
            target=self._execute,
            args=(prompt_id, prompt, targets, extra_data, outbox),
            name=f"diffgraph-worker-{self.index}",
            daemon=True,
        )
        thread.start()
        finished = False
        while not finished:
            batch = [outbox.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(outbox.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _END:
                batch.pop()
                finished = True
            if batch:
                yield batch
        thread.join()

    def _execute(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        targets: list[str] | None,
        extra_data: dict[str, Any],
        outbox: queue.Queue[Any],
    ) -> None:
        sink = _Relay(self.staging, outbox)
        flag = InterruptFlag()
        with self._run_lock:
            with self._state_lock:
                self._running = (prompt_id, flag)
                if prompt_id in self._early_interrupts:
                    flag.set()
            status, outputs = "error", dict[str, Any]()
            try:
                status, outputs = self._execute_locked(prompt_id, prompt, targets, extra_data, sink, flag)
            finally:
                leftovers = self.staging.sweep()
                if leftovers:
                    outbox.put(("files", leftovers))
                with self._state_lock:
                    self._running = None
                self.prompts += 1
                self.recent.append(prompt_id)
                self._apply_free()
                outbox.put(("done", status, outputs, self.stats()))
                outbox.put(_END)

    def _execute_locked(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        targets: list[str] | None,
        extra_data: dict[str, Any],
        sink: Any,
        flag: InterruptFlag,
    ) -> tuple[str, dict[str, Any]]:
        try:
            # Validated again against this worker's registry: a node missing here (custom_nodes not
            # installed on this machine) is reported as such instead of failing somewhere inside.
            validated = validate_workflow(
                parse_api_workflow(prompt), self.runtime.registry, targets or None, partial=True
            )
            result = self.runtime.executor.execute(
                validated, prompt_id=prompt_id, sink=sink, interrupt=flag, extra_data=extra_data
            )
            return result.status, result.ui_outputs
        except Exception as exc:  # an executor or validation failure (not a node's): report it
            sink(
                ev.ExecutionFailed(
                    prompt_id,
                    "",
                    "",
                    f"worker {self.index} on {platform.node()} could not run the prompt: {exc}",
                    type(exc).__name__,
                    traceback.format_exception(type(exc), exc, exc.__traceback__),
                )
            )
            return "error", {}


def _remove_stale_staging(root: Path) -> None:
    """Staging folders of worker processes that are gone (killed, restarted) on this machine: their files
    were shipped or belong to prompts that were re-run, only placeholders are left."""
    for folder in root.glob("diffgraph-worker-*-*") if root.is_dir() else ():
        pid = folder.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # someone else's live process
            continue


class _Relay:
    """The executor's event sink in a worker: queues each event for the stream, preceded by the files a
    node's UI names (so the server has landed them before it relays the `executed` message)."""

    wants_previews = True  # render sampler previews: the server sends them to clients

    def __init__(self, staging: Staging, outbox: queue.Queue[Any]) -> None:
        self.staging = staging
        self.outbox = outbox

    def __call__(self, event: Any) -> None:
        if isinstance(event, ev.NodeExecuted):
            files = self.staging.take(event.output)
            if files:
                self.outbox.put(("files", files))
        self.outbox.put(("event", event))
