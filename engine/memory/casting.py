"""Per-layer weight substitution at forward time.

One mechanism serves two features:
- partial loading streams a layer that is not resident: its weights are copied to the compute device just
  before its forward and the copy is released right after (the stored weights never move);
- fp8 (or any low-precision) storage: weights are kept in the storage dtype and a copy in the compute dtype
  exists only while the layer runs (float8 matmuls are not generally available, so fp8 is storage only).

A "unit" is any module that directly owns parameters or buffers (for SD models: Linear, Conv, norms,
embeddings). Its forward pre-hook swaps each direct tensor for a converted copy, its forward hook
(`always_call=True`, so an exception inside the forward does not leak the copy) restores the originals.
A callback reports the transient bytes so the model manager can account for them.

Limitation: a parent that reads a child's weight directly (`x @ child.weight`) without calling the child
bypasses the hook; the SD model code in this repository always calls its layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

AllocCallback = Callable[[int], None]


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def direct_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and buffers a module owns itself (not its children's)."""
    for name, p in module._parameters.items():
        if p is not None:
            yield name, p
    for name, b in module._buffers.items():
        if b is not None:
            yield name, b


def iter_units(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that own tensors directly, in definition order (the order a forward usually visits them)."""
    for name, module in model.named_modules():
        if any(True for _ in direct_tensors(module)):
            yield name, module


def unit_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a unit's direct tensors, as stored or (with dtype) after casting its floating tensors."""
    total = 0
    for _, t in direct_tensors(module):
        if dtype is not None and t.is_floating_point():
            total += t.numel() * torch.empty((), dtype=dtype).element_size()
        else:
            total += tensor_bytes(t)
    return total


def module_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = id(t)
        if key not in seen:
            seen.add(key)
            total += tensor_bytes(t)
    return total


class CastHook:
    """Swap one unit's direct tensors for copies on `device` / in `dtype` while its forward runs."""

    def __init__(
        self,
        module: nn.Module,
        *,
        device: torch.device | None,
        dtype: torch.dtype | None,
        on_alloc: AllocCallback | None = None,
        count_always: bool = False,
    ) -> None:
        self.module = module
        self.device = device
        self.dtype = dtype
        self.on_alloc = on_alloc
        # Streaming on a CPU "accounting device" moves nothing physically, but the bytes still count.
        self.count_always = count_always
        self._depth = 0
        self._saved: dict[tuple[str, str], torch.Tensor] = {}
        self._bytes = 0
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post, always_call=True),
        ]

    def _target(self, t: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        device = self.device if self.device is not None else t.device
        dtype = self.dtype if (self.dtype is not None and t.is_floating_point()) else t.dtype
        return device, dtype

    def _pre(self, module: nn.Module, args: object) -> None:
        self._depth += 1
        if self._depth > 1:  # re-entered (a module calling itself): tensors are already swapped in
            return
        nbytes = 0
        for kind, store in (("p", module._parameters), ("b", module._buffers)):
            for name, t in list(store.items()):
                if t is None:
                    continue
                device, dtype = self._target(t)
                changed = t.device != device or t.dtype != dtype
                if not changed and not self.count_always:
                    continue
                nbytes += t.numel() * torch.empty((), dtype=dtype).element_size()
                if not changed:
                    continue
                copy = t.detach().to(device=device, dtype=dtype)
                self._saved[(kind, name)] = t
                if kind == "p":
                    store[name] = nn.Parameter(copy, requires_grad=False)
                else:
                    store[name] = copy  # type: ignore[assignment]
        self._bytes = nbytes
        if nbytes and self.on_alloc is not None:
            self.on_alloc(nbytes)

    def _post(self, module: nn.Module, args: object, output: object) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        self.restore()

    def restore(self) -> None:
        for (kind, name), original in self._saved.items():
            store = self.module._parameters if kind == "p" else self.module._buffers
            store[name] = original  # type: ignore[assignment]
        self._saved.clear()
        self._depth = 0
        if self._bytes and self.on_alloc is not None:
            self.on_alloc(-self._bytes)
        self._bytes = 0

    def remove(self) -> None:
        self.restore()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class HookSet:
    """A group of CastHooks installed on one model; `remove()` takes them all off."""

    def __init__(self, hooks: Iterable[CastHook] = ()) -> None:
        self.hooks = list(hooks)

    def __len__(self) -> int:
        return len(self.hooks)

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def needs_dtype_cast(module: nn.Module, compute_dtype: torch.dtype | None) -> bool:
    if compute_dtype is None:
        return False
    return any(t.is_floating_point() and t.dtype != compute_dtype for _, t in direct_tensors(module))


def cast_on_forward(
    model: nn.Module, compute_dtype: torch.dtype, *, on_alloc: AllocCallback | None = None
) -> HookSet:
    """Run every unit whose floating tensors are not in `compute_dtype` with casted copies (standalone use;
    a model registered with the ModelManager gets this from `register(..., compute_dtype=...)` instead)."""
    hooks = [
        CastHook(unit, device=None, dtype=compute_dtype, on_alloc=on_alloc)
        for _, unit in iter_units(model)
        if needs_dtype_cast(unit, compute_dtype)
    ]
    return HookSet(hooks)
