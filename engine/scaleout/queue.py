"""The server's prompt queue with execution on Ray workers (`diffgraph serve --executor ray`).

Everything the single-process queue does stays: the in-memory heap mirrored to SQLite, validation,
`/queue`, `/history`, restart recovery (all inherited from PromptQueue). What changes is the worker
thread: a dispatcher hands each prompt, in queue order, to an idle worker chosen by the router, and one
relay thread per running prompt streams its events from the worker into the same PromptReporter the
embedded queue uses, so clients get the same WebSocket messages and history entries.

Faults: a worker whose process dies mid-prompt makes the stream raise; the prompt goes back to the
front of the queue once, barred from the worker it died on while another worker is alive, and fails
with an error naming the workers the second time. When every worker is dead for good, pending prompts
fail at once instead of waiting forever.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from engine.execution import events as ev
from engine.graph.validate import ValidatedWorkflow
from engine.runtime import Runtime
from engine.scaleout.actor import WorkerSpec
from engine.scaleout.outputs import OutputLander
from engine.scaleout.pool import WorkerPool, import_ray, worker_key
from engine.scaleout.relay import ClientSequencer, PromptGate
from engine.scaleout.router import BUSY, Pending, RoutingStats, WorkerSlot, needed_models, plan
from engine.server.config import ServerConfig
from engine.server.protocol import ClientHub, PromptReporter
from engine.server.store import PromptStore, QueuedPrompt
from engine.server.worker import PromptQueue, _executor_failure, history_entry

log = logging.getLogger("diffgraph.scaleout")

# How many prompts from the head of the queue the router considers (see router.plan).
LOOKAHEAD = 8

QueueFactory = Callable[[Runtime, PromptStore, ClientHub, ServerConfig], PromptQueue]


@dataclass
class _Active:
    """A dispatched prompt: where it runs and what relays its messages."""

    item: QueuedPrompt
    validated: ValidatedWorkflow
    slot: WorkerSlot
    reporter: PromptReporter
    gate: PromptGate


class WorkerLost(RuntimeError):
    """The worker process running a prompt died (killed, crashed, its node lost)."""


class RayPromptQueue(PromptQueue):
    def __init__(
        self,
        runtime: Runtime,
        store: PromptStore,
        hub: ClientHub,
        config: ServerConfig,
        pool: WorkerPool,
        *,
        own_pool: bool = True,
        affinity: bool = True,
        retries: int = 1,
    ) -> None:
        super().__init__(runtime, store, hub, config)
        self.pool = pool
        self.own_pool = own_pool  # False: the caller started the pool and closes it (tests share one)
        self.affinity = affinity
        self.retries = retries
        pool.attach(self._cond)
        self.sequencer = ClientSequencer(hub)
        self.lander = OutputLander(runtime.folders)
        pool.on_lost = lambda slot: self.lander.forget(worker_key(slot))
        self.routing = RoutingStats()
        self._active: dict[str, _Active] = {}
        self._died_on: dict[str, list[int]] = {}  # prompt id -> workers that died running it
        self._skipped: dict[str, int] = {}  # prompt id -> times a later prompt went first (router.plan)
        self._relays: set[threading.Thread] = set()

    # -- start-up and shutdown ---------------------------------------------------------------------

    def start(self) -> None:
        if self.own_pool:
            self.pool.start()  # connecting to the cluster fails loudly here, before the server serves
        super().start()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop dispatching; running prompts get `grace_s` to finish, then are interrupted."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(30)
        deadline = time.monotonic() + grace
        for relay in list(self._relays):
            relay.join(max(0.0, deadline - time.monotonic()))
        if any(relay.is_alive() for relay in self._relays):
            log.info("interrupting the running prompts for shutdown")
            self.interrupt_running()
            for relay in list(self._relays):
                relay.join(30)
        if self.own_pool:
            self.pool.close()

    # -- what the routes ask (see PromptQueue) -----------------------------------------------------

    def _knows(self, prompt_id: str) -> bool:
        with self._cond:
            if prompt_id in self._active:
                return True
        return super()._knows(prompt_id)

    def _delete(self, wanted: set[str] | None) -> int:
        """Also closes the gates of deleted prompts that had a place reserved (router lookahead), so the
        later prompts of their clients are not held back for them."""
        with self._cond:
            before = {item.prompt_id for _, item in self._heap}
        count = super()._delete(wanted)
        with self._cond:
            gone = before - {item.prompt_id for _, item in self._heap} - set(self._active)
        for prompt_id in gone:
            self.sequencer.close(prompt_id)
            self._skipped.pop(prompt_id, None)
        return count

    def remaining(self) -> int:
        with self._cond:
            return len(self._heap) + len(self._active)

    def snapshot(self) -> tuple[list[list[Any]], list[list[Any]]]:
        with self._cond:
            running = [a.item for a in self._active.values()]
            pending = [item for _, item in self._heap]
        running.sort(key=lambda item: item.sort_key)
        pending.sort(key=lambda item: item.sort_key)
        return [item.as_comfy() for item in running], [item.as_comfy() for item in pending]

    def current(self) -> tuple[str | None, str, str | None] | None:
        with self._cond:
            actives = sorted(self._active.values(), key=lambda a: a.item.sort_key)
        for active in actives:
            if active.reporter.current_node is not None:
                item = active.item
                return (item.extra_data.get("client_id"), item.prompt_id, active.reporter.current_node)
        return None

    def interrupt_running(self, prompt_id: str | None = None) -> bool:
        """Forward the interrupt to the worker running the prompt (every running prompt without an id)."""
        with self._cond:
            targets = [a for pid, a in self._active.items() if prompt_id is None or pid == prompt_id]
        for active in targets:
            self.pool.handle(active.slot.index).interrupt.remote(active.item.prompt_id)
            log.info("interrupt forwarded", extra={"prompt_id": active.item.prompt_id})
        return bool(targets)

    def request_free(self, *, unload_models: bool, free_memory: bool) -> None:
        """Every worker frees between its prompts; their answers refresh what the router thinks they hold."""
        refs = self.pool.broadcast("free", unload_models, free_memory)

        def learn() -> None:
            ray = import_ray()
            for ref in refs:
                try:
                    stats = ray.get(ref, timeout=600)
                except Exception:  # a worker died meanwhile: the pool notices on its own
                    continue
                with self._cond:
                    for slot in self.pool.slots:
                        if slot.index == stats.get("index") and slot.pid == stats.get("pid"):
                            slot.learn(stats)

        threading.Thread(target=learn, name="diffgraph-ray-free", daemon=True).start()

    def cluster_stats(self) -> dict[str, Any]:
        """The workers' own stats and the router's figures."""
        return {"workers": self.pool.stats(), "routing": self.routing.as_dict()}

    # -- the dispatcher ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            doomed: list[tuple[QueuedPrompt, str]] = []
            active: _Active | None = None
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    if self._heap and self.pool.all_dead():
                        doomed = self._take_all_pending()
                        break
                    active = self._dispatch()
                    if active is not None:
                        break
                    self._cond.wait()
            for item, message in doomed:
                self._fail_unstarted(item, message)
            if active is None:
                continue
            relay = threading.Thread(
                target=self._relay, args=(active,), name=f"diffgraph-ray-relay-{active.slot.index}"
            )
            self._relays.add(relay)
            relay.start()

    def _dispatch(self) -> _Active | None:
        """Pop the next prompt onto an idle worker (caller holds the lock); None when none fits."""
        window = heapq.nsmallest(LOOKAHEAD, self._heap)
        alive = self.pool.alive_indexes()
        pending = []
        for _, item in window:
            exclude = frozenset(self._died_on.get(item.prompt_id, ()))
            if exclude and not alive - exclude:
                exclude = frozenset()  # no other worker left: the restarted one may try
            skipped = self._skipped.get(item.prompt_id, 0)
            pending.append(Pending(needed_models(item.prompt), exclude, skipped))
        choice = plan(self.pool.slots, pending, self.affinity)
        if choice is None:
            return None
        slot, position = choice
        item = window[position][1]
        if position:
            head = window[0][1].prompt_id
            self._skipped[head] = self._skipped.get(head, 0) + 1
            for _, earlier in window[:position]:  # their results still come first to their clients
                self.sequencer.open(earlier.prompt_id, earlier.extra_data.get("client_id"))
        self._heap.remove(window[position])
        heapq.heapify(self._heap)
        self._skipped.pop(item.prompt_id, None)
        validated = self._validated.pop(item.prompt_id)
        needed = pending[position].needed
        hit = self.routing.record(slot, needed)
        slot.hits += 1 if hit else 0
        slot.prompts += 1
        # It will hold them once this prompt loaded them: route accordingly until its stats say otherwise
        # (they come with the prompt's end), or the next prompt needing them waits for nothing.
        slot.in_ram = slot.in_ram | (needed - slot.on_device)
        slot.state, slot.running = BUSY, item.prompt_id
        gate = self.sequencer.open(item.prompt_id, item.extra_data.get("client_id"))
        active = _Active(item, validated, slot, self._reporter_for(item, gate), gate)
        self._active[item.prompt_id] = active
        log.info(
            "prompt dispatched",
            extra={"prompt_id": item.prompt_id, "worker": slot.index, "hit": hit},
        )
        return active

    def _reporter_for(self, item: QueuedPrompt, gate: PromptGate) -> PromptReporter:
        # The gate stands in for the hub: same messages, held back while an earlier prompt of the same
        # client is still running (relay.py).
        hub = cast(ClientHub, gate)
        return PromptReporter(
            hub,
            item.prompt_id,
            item.extra_data.get("client_id"),
            self.config.preview_format,
            self.config.preview_max_size,
        )

    def _take_all_pending(self) -> list[tuple[QueuedPrompt, str]]:
        reasons = "; ".join(f"worker {s.index}: {s.error}" for s in self.pool.slots)
        message = f"no Ray worker is alive to run this prompt ({reasons})"
        doomed = [(item, message) for _, item in sorted(self._heap, key=lambda pair: pair[0])]
        self._heap.clear()
        self._validated.clear()
        return doomed

    # -- one running prompt ------------------------------------------------------------------------

    def _relay(self, active: _Active) -> None:
        try:
            self._relay_prompt(active)
        finally:  # after the history and the last message: stop() waits for exactly this
            self._relays.discard(threading.current_thread())

    def _relay_prompt(self, active: _Active) -> None:
        item, reporter = active.item, active.reporter
        started = time.perf_counter()
        try:
            if not self._persist(
                "mark the prompt running", item.prompt_id, self.store.mark_running, item.prompt_id
            ):
                raise RuntimeError("the queue file could not be written")
            status, outputs = self._stream(active)
        except WorkerLost as exc:
            failure = self._requeue(active, exc)
            if failure is None:
                return
            reporter(_lost_failure(item.prompt_id, failure))
            status, outputs = "error", {}
        except Exception as exc:  # a relay failure (not a node's): record it, keep serving
            log.exception("relaying the prompt failed", extra={"prompt_id": item.prompt_id})
            reporter(_executor_failure(item.prompt_id, exc))
            status, outputs = "error", {}
        self._finish(active, status, outputs, started)

    def _stream(self, active: _Active) -> tuple[str, dict[str, Any]]:
        """Run the prompt on its worker, feeding the reporter as batches arrive."""
        ray = import_ray()
        from ray.exceptions import RayActorError

        item, slot = active.item, active.slot
        key = worker_key(slot)
        handle = self.pool.handle(slot.index)
        done: tuple[str, dict[str, Any]] | None = None
        try:
            stream = handle.run.options(num_returns="streaming").remote(
                item.prompt_id, item.prompt, item.targets, item.extra_data
            )
            for ref in stream:
                for message in ray.get(ref):
                    if message[0] == "files":
                        self.lander.land(key, message[1])
                    elif message[0] == "event":
                        active.reporter(self._translate(key, message[1]))
                    elif message[0] == "done":
                        done = (message[1], self.lander.rewrite(key, message[2]))
                        with self._cond:
                            slot.learn(message[3])
        except RayActorError as exc:
            if done is None:  # died before the end: the prompt did not complete
                raise WorkerLost(f"worker {slot.index} (pid {slot.pid} on {slot.node}) died: {exc}") from exc
        if done is None:
            raise RuntimeError(f"worker {slot.index} ended the prompt without a result")
        return done

    def _translate(self, key: str, event: Any) -> Any:
        if isinstance(event, ev.NodeExecuted):  # name the files as they landed here
            return dataclasses.replace(event, output=self.lander.rewrite(key, event.output))
        return event

    def _requeue(self, active: _Active, exc: WorkerLost) -> str | None:
        """Back to the front of the queue (its sort key is older than anything pending), once: None when
        re-queued, else why the prompt fails."""
        item = active.item
        with self._cond:
            self.pool.lost(active.slot, str(exc))
            died = self._died_on.setdefault(item.prompt_id, [])
            died.append(active.slot.index)
            if self._stopping:
                return f"{exc} while the server was stopping"
            if len(died) > self.retries:
                return f"{exc}; it had already been re-queued after worker {died[0]} died running it"
            del self._active[item.prompt_id]
            self._push(item, active.validated)
            self._cond.notify_all()
        log.warning(
            "prompt re-queued: its worker died", extra={"prompt_id": item.prompt_id, "error": str(exc)}
        )
        return None

    def _finish(self, active: _Active, status: str, outputs: dict[str, Any], started: float) -> None:
        item, reporter = active.item, active.reporter
        entry = history_entry(item, status, reporter.messages, outputs)
        self._persist("write the history entry", item.prompt_id, self.store.finish, item.prompt_id, entry)
        with self._cond:
            self._active.pop(item.prompt_id, None)
            self._died_on.pop(item.prompt_id, None)
            if active.slot.running == item.prompt_id:
                self.pool.release(active.slot)
        # After the history is written, so a client reacting to `executing: null` finds it.
        reporter.finished()
        self.sequencer.close(item.prompt_id)
        self.post_status()
        log.info(
            "prompt finished",
            extra={
                "prompt_id": item.prompt_id,
                "status": status,
                "worker": active.slot.index,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    def _fail_unstarted(self, item: QueuedPrompt, message: str) -> None:
        gate = self.sequencer.open(item.prompt_id, item.extra_data.get("client_id"))
        reporter = self._reporter_for(item, gate)
        reporter(_lost_failure(item.prompt_id, message))
        entry = history_entry(item, "error", reporter.messages, {})
        self._persist("write the history entry", item.prompt_id, self.store.finish, item.prompt_id, entry)
        reporter.finished()
        self.sequencer.close(item.prompt_id)
        self.post_status()


def _lost_failure(prompt_id: str, message: str) -> ev.ExecutionFailed:
    return ev.ExecutionFailed(
        prompt_id,
        "",
        "",
        f"{message}. The prompt did not complete; see the Ray worker logs (a crash, the OOM killer or a "
        "lost node) and queue it again.",
        "WorkerLost",
        [],
    )


def ray_queue_factory(
    spec: WorkerSpec, *, workers: int | None = None, address: str | None = None, cpus_per_worker: float = 1.0
) -> QueueFactory:
    """What `create_app(queue_factory=...)` takes for `--executor ray`. Checks that Ray is installed now,
    so a missing extra fails before the server starts."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    import_ray()

    def make(runtime: Runtime, store: PromptStore, hub: ClientHub, config: ServerConfig) -> PromptQueue:
        pool = WorkerPool(spec, workers=workers, address=address, cpus_per_worker=cpus_per_worker)
        return RayPromptQueue(runtime, store, hub, config, pool)

    return make
