"""The model manager: owns where every model's weights are (compute device, RAM, or nowhere).

Life of a registered model (`ManagedModel.location`):

    DROPPED --(use: loader re-reads the file)--> OFFLOADED --(use)--> DEVICE or PARTIAL
       ^                                             |  ^                   |
       +----(RAM budget exceeded, LRU first)---------+  +--(room needed, LRU first / unload)--+

- `use(handle_or_patcher)` marks the model most recently used, makes room on the device by offloading
  least recently used models (never pinned ones: those inside an active `with manager.use(...)`), then
  moves it to the device fully, or partially when it does not fit even alone: as many layers as fit stay
  resident, the others are streamed per forward pass (`casting.CastHook`), with identical results.
- Weight patches of a `ModelPatcher` clone are applied after the move and removed before offloading.
- A RAM budget bounds the bytes of offloaded models; beyond it, least recently used models that have a
  loader are dropped (weights replaced by meta tensors) and re-read through their loader when used again.
- Device bytes are tracked per model (resident weights) plus the transient copies of streamed/cast layers;
  `peak_device_bytes` is their maximum. With `device_budget_bytes` the manager treats the compute device as
  having exactly that capacity. That is how tests run on the CPU: the compute device is physically the
  CPU, but eviction order, partial-loading decisions and peak accounting are the real ones.

Thread safety: the executor runs one prompt at a time, but the server's /free handler and /system_stats run
on other threads, so every public method takes the manager's (re-entrant) lock.
"""

from __future__ import annotations

import enum
import gc
import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from torch import nn

from engine.kernels.layers import release_kernel_caches, use_fast_kernels
from engine.memory.casting import CastHook, HookSet, direct_tensors, iter_units, module_bytes, unit_bytes
from engine.memory.devices import DeviceInfo, VRAMState, device_memory, empty_cache
from engine.memory.oom import InsufficientMemoryError
from engine.memory.patcher import ModelPatcher, PatchState

StateDictLoader = Callable[[], Mapping[str, torch.Tensor]]


class Location(enum.Enum):
    DEVICE = "device"  # all weights resident on the compute device
    PARTIAL = "partial"  # some layers resident, the rest streamed per forward
    OFFLOADED = "offloaded"  # weights in RAM (the offload device)
    DROPPED = "dropped"  # weights released; the loader re-reads them


@dataclass(eq=False)
class ManagedModel:
    """A registered model. Created by `ModelManager.register`; pass it (or a ModelPatcher) to `use`."""

    name: str
    module: nn.Module
    size_bytes: int
    loader: StateDictLoader | None
    compute_dtype: torch.dtype | None
    patch_state: PatchState
    location: Location = Location.OFFLOADED
    resident_bytes: int = 0
    last_used: int = 0
    pins: int = 0
    load_count: int = 0  # how many times the loader re-read the weights
    streamed_units: list[str] = field(default_factory=list)
    hooks: HookSet | None = None
    _dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    # A clone's compute dtype the current placement casts to (ModelPatcher.compute_dtype), and the
    # module's own `compute_dtype` attribute (what its forward casts inputs to) before any override.
    dtype_override: torch.dtype | None = None
    module_dtype: tuple[torch.dtype | None] | None = None

    @property
    def on_device(self) -> bool:
        return self.location in (Location.DEVICE, Location.PARTIAL)

    def __repr__(self) -> str:
        return f"ManagedModel({self.name!r}, {self.location.value}, {self.size_bytes} bytes)"


class _InUse:
    """Returned by `ModelManager.use`: the model is already loaded; `with` pins it while the block runs."""

    def __init__(self, manager: ModelManager, handle: ManagedModel) -> None:
        self._manager = manager
        self.handle = handle
        self.module = handle.module

    def __enter__(self) -> nn.Module:
        with self._manager._lock:
            self.handle.pins += 1
        return self.module

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._manager._lock:
            self.handle.pins = max(0, self.handle.pins - 1)


class ModelManager:
    def __init__(
        self,
        device_info: DeviceInfo,
        *,
        device_budget_bytes: int | None = None,
        ram_budget_bytes: int | None = None,
    ) -> None:
        self.device_info = device_info
        self.compute_device = device_info.compute_device
        self.offload_device = device_info.offload_device
        self.device_budget_bytes = device_budget_bytes
        self.ram_budget_bytes = (
            ram_budget_bytes if ram_budget_bytes is not None else device_info.ram_budget_bytes
        )
        self._lock = threading.RLock()
        # Weak references: a model nobody refers to any more (e.g. a loader result the output cache
        # evicted, with no clone left) is forgotten and its memory freed, instead of accumulating for
        # the life of a server. Whoever uses a model holds its ManagedModel (via a handle/patcher).
        self._refs: list[weakref.ref[ManagedModel]] = []
        self._clock = itertools.count(1)
        self._transient_bytes = 0
        self.peak_device_bytes = 0

    # ------------------------------------------------------------------ registration
    def register(
        self,
        module: nn.Module,
        *,
        name: str | None = None,
        loader: StateDictLoader | None = None,
        size_bytes: int | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> ManagedModel:
        """Register `module`. `loader` returns its state dict (e.g. a memory-mapped safetensors read) so the
        weights can be dropped from RAM and re-read; `compute_dtype` makes layers stored in another dtype
        (fp8, or fp16 on a CPU) run through per-layer casting."""
        with self._lock:
            existing = self.handle_for(module)
            if existing is not None:
                raise ValueError(f"module {type(module).__name__} is already registered as {existing.name!r}")
            has_meta = any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))
            if has_meta and loader is None:
                raise ValueError(
                    f"model {name or type(module).__name__!r} has weights on the meta device but no loader; "
                    "pass loader= (a function returning its state dict) or load the weights first"
                )
            # Plain Linear/Conv2d layers get the CPU fast paths (engine.kernels: the faster GEMM library,
            # packed conv weights); on other devices they are torch's layers. Every model the engine runs
            # passes here.
            use_fast_kernels(module)
            handle = ManagedModel(
                name=name or type(module).__name__,
                module=module,
                size_bytes=size_bytes if size_bytes is not None else module_bytes(module),
                loader=loader,
                compute_dtype=compute_dtype,
                patch_state=PatchState(module, self.offload_device),
                _dtypes={k: v.dtype for k, v in module.state_dict(keep_vars=True).items()},
            )
            if has_meta:
                handle.location = Location.DROPPED
            elif self.compute_device != self.offload_device and all(
                t.device == self.compute_device for t in module.parameters()
            ):
                handle.location = Location.DEVICE
                handle.resident_bytes = handle.size_bytes
                self._note_peak()
            self._refs.append(weakref.ref(handle))
            self._enforce_ram_budget(keep=(handle,))
            return handle

    @property
    def _models(self) -> list[ManagedModel]:
        """The registered models still alive (pruning the references to collected ones)."""
        alive: list[ManagedModel] = []
        refs: list[weakref.ref[ManagedModel]] = []
        for ref in self._refs:
            model = ref()
            if model is not None:
                alive.append(model)
                refs.append(ref)
        self._refs = refs
        return alive

    def handle_for(self, module: nn.Module) -> ManagedModel | None:
        with self._lock:
            return next((h for h in self._models if h.module is module), None)

    def patcher(self, handle: ManagedModel) -> ModelPatcher:
        """A ModelPatcher (no patches yet) over a registered model; its clones share the model's
        `PatchState`, which records which clone's patches are written into the weights."""
        with self._lock:
            if handle not in self._models:
                raise ValueError(f"model {handle.name!r} is not registered with this manager")
        return ModelPatcher(handle.module, handle=handle)

    # ------------------------------------------------------------------ figures
    @property
    def models(self) -> list[ManagedModel]:
        with self._lock:
            return list(self._models)

    def loaded_models(self) -> list[ManagedModel]:
        """Models with weights on the compute device, most recently used first."""
        with self._lock:
            return sorted((h for h in self._models if h.on_device), key=lambda h: -h.last_used)

    @property
    def resident_device_bytes(self) -> int:
        return sum(h.resident_bytes for h in self._models if h.on_device)

    @property
    def current_device_bytes(self) -> int:
        """Tracked bytes on the compute device now: resident weights + transient layer copies."""
        return self.resident_device_bytes + self._transient_bytes

    @property
    def ram_bytes(self) -> int:
        """Bytes of model weights held in RAM (offloaded models and the streamed part of partial ones)."""
        total = 0
        same_memory = self.compute_device == self.offload_device and self.device_budget_bytes is None
        for h in self._models:
            if h.location is Location.OFFLOADED:
                total += h.size_bytes
            elif h.location is Location.PARTIAL:
                total += h.size_bytes - h.resident_bytes
            elif h.location is Location.DEVICE and same_memory:
                total += h.size_bytes
        return total

    def device_capacity_bytes(self) -> int | None:
        """What the device can hold for us: the accounting budget, or the real memory minus the reserve;
        None when the compute device is the host's own RAM (nothing to move, no limit enforced here)."""
        if self.device_budget_bytes is not None:
            return self.device_budget_bytes
        if self.compute_device == self.offload_device:
            return None
        _, total = device_memory(self.compute_device)
        return max(0, total - self.device_info.reserve_bytes)

    def device_free_bytes(self) -> int | None:
        if self.device_budget_bytes is not None:
            return self.device_budget_bytes - self.current_device_bytes
        if self.compute_device == self.offload_device:
            return None
        free, _ = device_memory(self.compute_device)
        return max(0, free - self.device_info.reserve_bytes)

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_device_bytes = self.current_device_bytes

    def _note_peak(self) -> None:
        self.peak_device_bytes = max(self.peak_device_bytes, self.current_device_bytes)

    def _on_transient(self, delta: int) -> None:
        with self._lock:
            self._transient_bytes += delta
            self._note_peak()

    # ------------------------------------------------------------------ loading
    def use(self, target: ManagedModel | ModelPatcher, *, extra_bytes: int = 0) -> _InUse:
        """Load `target` for use now (see `load`); as a context manager it also pins the model so that
        loading other models inside the block cannot evict it."""
        handle = self.load(target, extra_bytes=extra_bytes)
        return _InUse(self, handle)

    def load(self, target: ManagedModel | ModelPatcher, *, extra_bytes: int = 0) -> ManagedModel:
        """Move a model (with a patcher: that clone's patches applied) to the compute device.

        `extra_bytes`: device memory the caller will need besides the weights (activations), kept free.
        """
        patcher = target if isinstance(target, ModelPatcher) else None
        handle = self._resolve(target)
        with self._lock:
            handle.last_used = next(self._clock)
            self._set_dtype_override(handle, patcher.compute_dtype if patcher is not None else None)
            if not handle.on_device:
                if handle.location is Location.DROPPED:
                    self._materialize(handle)
                self._place(handle, extra_bytes)
            if patcher is not None:
                handle.patch_state.apply(patcher)
            else:
                handle.patch_state.restore()
            self._enforce_ram_budget(keep=(handle,))
            return handle

    def _resolve(self, target: ManagedModel | ModelPatcher) -> ManagedModel:
        if isinstance(target, ManagedModel):
            handle = target
        elif isinstance(target, ModelPatcher):
            if target.handle is None:
                raise ValueError(
                    "this ModelPatcher is not over a registered model; get it from manager.patcher()"
                )
            handle = target.handle
        else:
            raise TypeError(f"use() takes a ManagedModel or ModelPatcher, got {type(target).__name__}")
        if handle not in self._models:
            raise ValueError(f"model {handle.name!r} is not registered with this manager")
        return handle

    def _set_dtype_override(self, handle: ManagedModel, dtype: torch.dtype | None) -> None:
        """Compute in `dtype` (None: the registered compute dtype): a placement made for another dtype is
        undone (its cast hooks cast to that one), and the module's own `compute_dtype` attribute, which
        its forward casts inputs to, follows."""
        if handle.dtype_override == dtype:
            return
        if handle.on_device:
            self._offload(handle)
        module: Any = handle.module  # a network with a plain `compute_dtype` attribute (UNetModel)
        if hasattr(module, "compute_dtype"):
            own: tuple[torch.dtype | None] = handle.module_dtype or (module.compute_dtype,)
            handle.module_dtype = own
            module.compute_dtype = dtype if dtype is not None else own[0]
        handle.dtype_override = dtype

    def _cast_dtype(self, handle: ManagedModel, unit: nn.Module) -> torch.dtype | None:
        dt = handle.dtype_override or handle.compute_dtype
        if dt is None:
            return None
        return dt if any(t.is_floating_point() and t.dtype != dt for _, t in direct_tensors(unit)) else None

    def _place(self, handle: ManagedModel, extra_bytes: int) -> None:
        units = list(iter_units(handle.module))
        # Largest transient copy a forward can need: a streamed unit in its compute form, plus the copies
        # of its ancestors that own tensors themselves (their forward is still running around it).
        compute_bytes = {name: unit_bytes(u, self._cast_dtype(handle, u)) for name, u in units}
        transient_reserve = max((_with_ancestors(compute_bytes, name) for name in compute_bytes), default=0)
        cast_reserve = max(
            (unit_bytes(u, dt) for _, u in units if (dt := self._cast_dtype(handle, u)) is not None),
            default=0,
        )
        state = self.device_info.vram_state
        if self.device_budget_bytes is not None and state is VRAMState.SHARED:
            state = VRAMState.NORMAL_VRAM  # accounting device: behave like a GPU with that capacity
        full_need = handle.size_bytes + cast_reserve + extra_bytes
        if state not in (VRAMState.NO_VRAM, VRAMState.LOW_VRAM):
            free = self.device_free_bytes()
            if free is not None and free < full_need:
                self.free_memory(full_need, keep=(handle,))
                free = self.device_free_bytes()
            if free is None or free >= full_need:
                self._move_full(handle)
                return
        else:
            self.free_memory(transient_reserve + extra_bytes + (handle.size_bytes // 2), keep=(handle,))
        free = self.device_free_bytes()
        available = (free if free is not None else full_need) - extra_bytes
        if available < transient_reserve:
            capacity = self.device_capacity_bytes()
            raise InsufficientMemoryError(
                f"cannot run model {handle.name!r}: even streaming it layer by layer needs "
                f"{transient_reserve} bytes for its largest layer plus {extra_bytes} for activations",
                needed_bytes=transient_reserve + extra_bytes,
                free_bytes=max(0, free or 0),
                total_bytes=capacity or 0,
                device=str(self.compute_device),
            )
        budget = available - transient_reserve
        if state is VRAMState.NO_VRAM:
            budget = 0
        elif state is VRAMState.LOW_VRAM:
            budget = min(budget, available // 2)  # keep half of what is free for activations
        self._move_partial(handle, units, budget)

    def _move_full(self, handle: ManagedModel) -> None:
        handle.module.to(self.compute_device)
        handle.location = Location.DEVICE
        handle.resident_bytes = handle.size_bytes
        handle.streamed_units = []
        hooks = [
            CastHook(unit, device=None, dtype=dt, on_alloc=self._on_transient)
            for _, unit in iter_units(handle.module)
            if (dt := self._cast_dtype(handle, unit)) is not None
        ]
        handle.hooks = HookSet(hooks) if hooks else None
        self._note_peak()

    def _move_partial(self, handle: ManagedModel, units: list[tuple[str, nn.Module]], budget: int) -> None:
        resident = 0
        hooks: list[CastHook] = []
        streamed: list[str] = []
        for name, unit in units:
            size = unit_bytes(unit)
            dt = self._cast_dtype(handle, unit)
            if resident + size <= budget:
                _move_unit(unit, self.compute_device)
                resident += size
                if dt is not None:
                    hooks.append(CastHook(unit, device=None, dtype=dt, on_alloc=self._on_transient))
            else:
                streamed.append(name)
                hooks.append(
                    CastHook(
                        unit,
                        device=self.compute_device,
                        dtype=dt,
                        on_alloc=self._on_transient,
                        count_always=True,
                    )
                )
        handle.location = Location.PARTIAL if streamed else Location.DEVICE
        handle.resident_bytes = resident if streamed else handle.size_bytes
        handle.streamed_units = streamed
        handle.hooks = HookSet(hooks) if hooks else None
        self._note_peak()

    # ------------------------------------------------------------------ unloading
    def offload(self, handle: ManagedModel) -> None:
        """Move a model's weights to the offload device (RAM), removing its patches first."""
        with self._lock:
            if handle.on_device:
                self._offload(handle)
                self._enforce_ram_budget(keep=())

    def _offload(self, handle: ManagedModel) -> None:
        release_kernel_caches(handle.module)  # packed conv weights: a second copy, only while in use
        if handle.hooks is not None:
            handle.hooks.remove()
            handle.hooks = None
        handle.patch_state.restore()
        if handle.location is Location.PARTIAL:
            for _, unit in iter_units(handle.module):
                _move_unit(unit, self.offload_device)
        else:
            handle.module.to(self.offload_device)
        handle.location = Location.OFFLOADED
        handle.resident_bytes = 0
        handle.streamed_units = []

    def drop(self, handle: ManagedModel) -> None:
        """Release a model's weights from RAM (they are re-read through its loader on next use)."""
        with self._lock:
            if handle.loader is None:
                raise ValueError(f"model {handle.name!r} has no loader, so its weights cannot be dropped")
            if handle.pins:
                raise RuntimeError(f"model {handle.name!r} is in use and cannot be dropped")
            if handle.on_device:
                self._offload(handle)
            release_kernel_caches(handle.module)
            _to_meta(handle.module)
            handle.location = Location.DROPPED

    def _materialize(self, handle: ManagedModel) -> None:
        assert handle.loader is not None  # DROPPED implies a loader (checked at register/drop)
        state_dict = handle.loader()
        wanted = handle._dtypes
        missing = sorted(set(wanted) - set(state_dict))
        if missing:
            raise RuntimeError(
                f"re-reading model {handle.name!r}: its loader returned no tensor for {len(missing)} key(s), "
                f"e.g. {missing[:5]}; the file on disk no longer matches the loaded model"
            )
        converted = {
            k: (v if v.dtype == wanted[k] else v.to(wanted[k])) for k, v in state_dict.items() if k in wanted
        }
        requires_grad = {k: p.requires_grad for k, p in handle.module.named_parameters()}
        handle.module.load_state_dict(converted, strict=True, assign=True)
        for k, p in handle.module.named_parameters():
            p.requires_grad_(requires_grad.get(k, False))
        handle.module.to(self.offload_device)
        handle.location = Location.OFFLOADED
        handle.load_count += 1

    def free_memory(self, bytes_needed: int, *, keep: Iterable[ManagedModel] = ()) -> int:
        """Offload least recently used models (not `keep`, not pinned) until `bytes_needed` are free on the
        device. Returns the bytes freed; may free less when nothing else can go."""
        with self._lock:
            keep_ids = {id(h) for h in keep}
            freed = 0
            candidates = sorted(
                (h for h in self._models if h.on_device and id(h) not in keep_ids and h.pins == 0),
                key=lambda h: h.last_used,
            )
            for h in candidates:
                free = self.device_free_bytes()
                if free is None or free >= bytes_needed:
                    break
                freed += h.resident_bytes
                self._offload(h)
                empty_cache(self.compute_device)
            return freed

    def _enforce_ram_budget(self, keep: Iterable[ManagedModel]) -> None:
        if self.ram_budget_bytes is None:
            return
        keep_ids = {id(h) for h in keep}
        candidates = sorted(
            (
                h
                for h in self._models
                if h.location is Location.OFFLOADED and h.loader is not None and id(h) not in keep_ids
            ),
            key=lambda h: h.last_used,
        )
        dropped = False
        for h in candidates:
            if self.ram_bytes <= self.ram_budget_bytes:
                break
            _to_meta(h.module)
            h.location = Location.DROPPED
            dropped = True
        if dropped:
            gc.collect()  # parameters can sit in reference cycles (hooks, closures): release them now

    def unload_all(self, *, drop: bool = False) -> None:
        """Offload every unpinned model (and with `drop`, release RAM copies of those that have a loader)."""
        with self._lock:
            for h in self._models:
                if h.pins:
                    continue
                if h.on_device:
                    self._offload(h)
                if drop and h.loader is not None and h.location is Location.OFFLOADED:
                    _to_meta(h.module)
                    h.location = Location.DROPPED
            gc.collect()
            empty_cache(self.compute_device)

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> dict[str, int]:
        """What the server's POST /free does (ComfyUI's body: {"unload_models": bool, "free_memory": bool}).
        `unload_models` offloads every model from the device; `free_memory` also drops RAM copies that can
        be re-read and returns cached allocator memory. Returns the device/RAM figures after."""
        with self._lock:
            if unload_models or free_memory:
                self.unload_all(drop=free_memory)
            return {"device_bytes": self.current_device_bytes, "ram_bytes": self.ram_bytes}


def _with_ancestors(sizes: dict[str, int], name: str) -> int:
    """sizes[name] plus the sizes of the enclosing modules ("a.b" for "a.b.c", ..., and the root "")."""
    total = sizes[name]
    parts = name.split(".") if name else []
    for depth in range(len(parts)):
        total += sizes.get(".".join(parts[:depth]), 0)
    return total


def _move_unit(unit: nn.Module, device: torch.device) -> None:
    for p in unit._parameters.values():
        if p is not None and p.device != device:
            p.data = p.data.to(device)
    for name, b in unit._buffers.items():
        if b is not None and b.device != device:
            unit._buffers[name] = b.to(device)


def _to_meta(module: nn.Module) -> None:
    """Release parameters and persistent buffers (non-persistent buffers are not in the state dict, so the
    loader could not restore them: they stay; they are small, e.g. position ids)."""
    for unit in module.modules():
        for name, p in unit._parameters.items():
            if p is not None and not p.is_meta:
                unit._parameters[name] = nn.Parameter(
                    torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
                )
        for name, b in unit._buffers.items():
            if b is not None and not b.is_meta and name not in unit._non_persistent_buffers_set:
                unit._buffers[name] = torch.empty_like(b, device="meta")
