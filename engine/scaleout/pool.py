"""The worker actors on a Ray cluster: starting them, knowing when each is ready, dead or back.

One actor per device: one GPU each on a cluster with GPUs, else one "CPU slot" (`cpus_per_worker` CPUs,
which Ray also uses as the worker's torch thread count through OMP_NUM_THREADS). Actors are restarted
by Ray when their process dies (max_restarts=-1); a call in flight then fails (the queue re-queues the
prompt) and the pool waits in the background for the new process to answer `ready` before dispatching
to it again: a worker that comes back rejoins. A worker whose constructor fails is dead for good.

Slot states change only under the queue's condition (`attach`), which is notified on every change.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.scaleout.actor import DiffgraphWorker, WorkerSpec
from engine.scaleout.router import DEAD, IDLE, LOST, STARTING, WorkerSlot

log = logging.getLogger("diffgraph.scaleout")

INSTALL_HINT = "the Ray executor needs the optional extra: pip install 'diffgraph[ray]'"
# How long one readiness probe waits before logging that a worker is still not there and waiting again.
PROBE_TIMEOUT_S = 60.0
# A worker whose readiness probe fails this many times in a row (ActorDiedError) is dead for good.
DEATHS_BEFORE_GIVING_UP = 3


def import_ray() -> Any:
    """Ray, imported on first use only (the embedded server never pays for it)."""
    try:
        import ray
    except ImportError as exc:
        raise ValueError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


def worker_key(slot: WorkerSlot) -> str:
    """Names one incarnation of a worker (a restarted actor is a new process with new staged files)."""
    return f"{slot.index}@{slot.node}:{slot.pid}"


class WorkerPool:
    def __init__(
        self,
        spec: WorkerSpec,
        *,
        workers: int | None = None,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.requested = workers
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.init_options = dict(init_options or {})
        self.slots: list[WorkerSlot] = []
        self._handles: dict[int, Any] = {}
        self._cond = threading.Condition()
        self._owns_ray = False
        self._closing = False
        self.on_lost: Callable[[WorkerSlot], None] | None = None  # called under the lock

    def attach(self, cond: threading.Condition) -> None:
        """Share the queue's condition: slot changes wake its dispatcher."""
        self._cond = cond

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the cluster (or start a local Ray instance) and create the actors; returns at once,
        each worker becomes idle when its runtime is built."""
        ray = import_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, **self.init_options}
            if self.address:
                ray.init(address=self.address, **options)
            else:  # a local instance: room for the workers asked for even on a small machine
                wanted = (self.requested or 1) * self.cpus_per_worker
                options.setdefault("num_cpus", max(os.cpu_count() or 1, int(wanted + 0.999)))
                ray.init(**options)
            self._owns_ray = True
        gpus = float(ray.cluster_resources().get("GPU", 0))
        count = self.requested or (int(gpus) if gpus >= 1 else 1)
        resources: dict[str, Any] = {"num_cpus": self.cpus_per_worker}
        if gpus >= 1:
            resources["num_gpus"] = 1
        actor_class = ray.remote(DiffgraphWorker)
        for index in range(count):
            handle = actor_class.options(
                max_restarts=-1, max_task_retries=0, max_concurrency=4, **resources
            ).remote(index, self.spec)
            slot = WorkerSlot(index)
            with self._cond:
                self.slots.append(slot)
                self._handles[index] = handle
            self._watch(slot)
        log.info("ray workers starting", extra={"workers": count, "gpus": gpus, "address": self.address})

    def close(self) -> None:
        ray = import_ray()
        with self._cond:
            self._closing = True
            handles = list(self._handles.values())
            self._cond.notify_all()
        for handle in handles:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # already gone
                log.debug("could not kill a worker actor", exc_info=True)
        if self._owns_ray:
            ray.shutdown()

    def handle(self, index: int) -> Any:
        return self._handles[index]

    # -- states (callers hold the condition) -----------------------------------------------------

    def all_dead(self) -> bool:
        return bool(self.slots) and all(slot.state == DEAD for slot in self.slots)

    def alive_indexes(self) -> set[int]:
        return {slot.index for slot in self.slots if slot.state != DEAD}

    def release(self, slot: WorkerSlot) -> None:
        slot.running = None
        if slot.state != IDLE and slot.state not in (LOST, DEAD):
            slot.state = IDLE
            slot.idle_since = time.monotonic()
        self._cond.notify_all()

    def lost(self, slot: WorkerSlot, reason: str) -> None:
        """The worker's process died: wait for Ray to restart it, then take it back."""
        if slot.state in (LOST, DEAD):
            return
        log.warning("ray worker lost", extra={"worker": slot.index, "pid": slot.pid, "reason": reason})
        if self.on_lost is not None:
            self.on_lost(slot)
        slot.state, slot.running = LOST, None
        slot.on_device = slot.in_ram = frozenset()
        self._cond.notify_all()
        self._watch(slot)

    # -- readiness -------------------------------------------------------------------------------

    def _watch(self, slot: WorkerSlot) -> None:
        threading.Thread(
            target=self._await_ready, args=(slot,), name=f"diffgraph-ray-probe-{slot.index}", daemon=True
        ).start()

    def _await_ready(self, slot: WorkerSlot) -> None:
        ray = import_ray()
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        deaths = 0
        while not self._closing:
            try:
                stats = ray.get(self._handles[slot.index].ready.remote(), timeout=PROBE_TIMEOUT_S)
            except GetTimeoutError:
                log.warning("ray worker not ready yet", extra={"worker": slot.index, "state": slot.state})
                continue
            except ActorDiedError as exc:
                deaths += 1
                if deaths < DEATHS_BEFORE_GIVING_UP:
                    time.sleep(1.0)
                    continue
                self._mark_dead(slot, exc)
                return
            except RayActorError:  # restarting: calls are answered again once the new process is up
                time.sleep(0.2)
                continue
            with self._cond:
                if self._closing:
                    return
                slot.learn(stats)
                slot.state, slot.error = IDLE, None
                slot.idle_since = time.monotonic()
                self._cond.notify_all()
            log.info("ray worker ready", extra={"worker": slot.index, "pid": slot.pid, "node": slot.node})
            return

    def _mark_dead(self, slot: WorkerSlot, exc: BaseException) -> None:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with self._cond:
            slot.state, slot.error, slot.running = DEAD, message, None
            self._cond.notify_all()
        log.error("ray worker dead", extra={"worker": slot.index, "error": message})

    # -- figures and maintenance -----------------------------------------------------------------

    def stats(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Every worker's own stats (asked now); a worker that cannot answer is listed with its state."""
        ray = import_ray()
        with self._cond:
            slots = list(self.slots)
        answers: list[dict[str, Any]] = []
        for slot in slots:
            entry: dict[str, Any] = {"index": slot.index, "state": slot.state, "error": slot.error}
            if slot.state not in (DEAD, STARTING, LOST):
                try:
                    entry.update(ray.get(self._handles[slot.index].stats.remote(), timeout=timeout_s))
                except Exception as exc:  # died meanwhile, or too slow: say so, do not fail the caller
                    entry["error"] = f"{type(exc).__name__}: {exc}"
            answers.append(entry)
        return answers

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until no worker is starting or restarting (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while any(slot.state in (STARTING, LOST) for slot in self.slots):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"ray workers not ready after {timeout_s}s: {self.slots}")
                self._cond.wait(left)

    def broadcast(self, method: str, *args: Any) -> list[Any]:
        """Call `method` on every worker that is not dead; returns the object refs."""
        with self._cond:
            indexes = [slot.index for slot in self.slots if slot.state != DEAD]
        return [getattr(self._handles[i], method).remote(*args) for i in indexes]

    def reset(self, timeout_s: float = 120.0) -> None:
        """Empty every worker's output cache and model manager (waits for running prompts)."""
        ray = import_ray()
        self.wait_ready(timeout_s)
        with self._cond:
            slots = [slot for slot in self.slots if slot.state != DEAD]
        answers = ray.get([self._handles[slot.index].reset.remote() for slot in slots], timeout=timeout_s)
        with self._cond:
            for slot, stats in zip(slots, answers, strict=True):
                slot.learn(stats)
