"""ModelManager on an accounting device: the CPU with a simulated capacity."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.kernels.layers import use_fast_kernels
from engine.memory.devices import DeviceInfo, VRAMState
from engine.memory.manager import Location, ModelManager
from engine.memory.oom import InsufficientMemoryError

WIDTH = 32
LINEAR_BYTES = (WIDTH * WIDTH + WIDTH) * 4  # one Linear(32, 32) in float32: weights + biases
STACK6 = 6 * LINEAR_BYTES


def fast(model: nn.Module) -> nn.Module:
    """The layers as the manager runs them (it switches them at register): references computed with
    other kernels would differ from the managed model by rounding, not by anything the manager does."""
    use_fast_kernels(model)
    return model


def linear_stack(n: int = 6, *, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(WIDTH, WIDTH), nn.GELU()]
    return fast(nn.Sequential(*layers).eval())


def conv_stack(*, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return fast(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.SiLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.SiLU(),
            nn.Conv2d(16, 3, 1),
        ).eval()
    )


def test_sizes_are_the_weight_bytes(cpu_info: DeviceInfo) -> None:
    manager = ModelManager(cpu_info, device_budget_bytes=10 * STACK6)
    handle = manager.register(linear_stack(6), name="a")
    assert handle.size_bytes == STACK6
    assert handle.location is Location.OFFLOADED
    manager.load(handle)
    assert handle.location is Location.DEVICE
    assert manager.current_device_bytes == STACK6


def test_models_nobody_holds_are_forgotten(cpu_info: DeviceInfo) -> None:
    """The manager holds weak references: when the last handle goes (e.g. the output cache evicted a
    loader result), the model leaves the registry and the device accounting, and its memory is freed."""
    import gc
    import weakref

    manager = ModelManager(cpu_info, device_budget_bytes=10 * STACK6)
    kept = manager.register(linear_stack(6), name="kept")
    dropped = manager.register(linear_stack(6, seed=1), name="dropped")
    manager.load(kept)
    manager.load(dropped)
    assert manager.current_device_bytes == 2 * STACK6
    module = weakref.ref(dropped.module)
    del dropped
    gc.collect()
    assert module() is None
    assert [h.name for h in manager.models] == ["kept"]
    assert manager.current_device_bytes == STACK6


def test_lru_eviction_order(cpu_info: DeviceInfo) -> None:
    # Room for two of the three models.
    manager = ModelManager(cpu_info, device_budget_bytes=2 * STACK6)
    a, b, c = (manager.register(linear_stack(6, seed=i), name=n) for i, n in enumerate("abc"))
    manager.load(a)
    manager.load(b)
    assert [h.name for h in manager.loaded_models()] == ["b", "a"]
    manager.load(c)  # a is the least recently used
    assert a.location is Location.OFFLOADED
    assert {h.name for h in manager.loaded_models()} == {"b", "c"}
    manager.load(b)  # touch b: c becomes the least recently used
    manager.load(a)
    assert c.location is Location.OFFLOADED
    assert [h.name for h in manager.loaded_models()] == ["a", "b"]
    assert manager.peak_device_bytes <= 2 * STACK6
    assert manager.current_device_bytes == 2 * STACK6


def test_pinned_models_are_not_evicted(cpu_info: DeviceInfo) -> None:
    manager = ModelManager(cpu_info, device_budget_bytes=2 * STACK6)
    a, b, c = (manager.register(linear_stack(6, seed=i), name=n) for i, n in enumerate("abc"))
    manager.load(b)
    with manager.use(a):
        manager.load(c)  # must evict b (more recent than nothing else), never the pinned a
        assert a.location is Location.DEVICE
        assert b.location is Location.OFFLOADED
    assert a.pins == 0


def test_free_memory_and_unload_all(cpu_info: DeviceInfo) -> None:
    manager = ModelManager(cpu_info, device_budget_bytes=3 * STACK6)
    a, b = (manager.register(linear_stack(6, seed=i), name=n) for i, n in enumerate("ab"))
    manager.load(a)
    manager.load(b)
    freed = manager.free_memory(2 * STACK6, keep=(b,))
    assert freed == STACK6 and a.location is Location.OFFLOADED and b.on_device
    manager.unload_all()
    assert manager.current_device_bytes == 0 and not manager.loaded_models()


def _forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def test_partial_loading_matches_full_and_respects_budget(cpu_info: DeviceInfo) -> None:
    model = linear_stack(6)
    reference = copy.deepcopy(model)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    expected = _forward(reference, x)

    budget = 4 * LINEAR_BYTES  # 3 resident layers + room for one streamed layer
    manager = ModelManager(cpu_info, device_budget_bytes=budget)
    handle = manager.register(model, name="big")
    manager.load(handle)
    assert handle.location is Location.PARTIAL
    assert handle.resident_bytes == 3 * LINEAR_BYTES
    assert len(handle.streamed_units) == 3
    out = _forward(model, x)
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)
    # The streamed layers' transient copies were counted, and the total never passed the budget.
    assert manager.peak_device_bytes == budget
    assert manager.current_device_bytes == 3 * LINEAR_BYTES  # copies released after each forward
    manager.offload(handle)
    assert manager.current_device_bytes == 0
    assert torch.equal(_forward(model, x), out)  # hooks removed, weights untouched


def test_partial_loading_evicts_others_first(cpu_info: DeviceInfo) -> None:
    manager = ModelManager(cpu_info, device_budget_bytes=4 * LINEAR_BYTES)
    small = manager.register(linear_stack(2, seed=3), name="small")
    big = manager.register(linear_stack(6), name="big")
    manager.load(small)
    manager.load(big)
    assert small.location is Location.OFFLOADED
    assert big.location is Location.PARTIAL and big.resident_bytes == 3 * LINEAR_BYTES


def test_partial_conv_model_matches_full(cpu_info: DeviceInfo) -> None:
    model = conv_stack()
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    expected = _forward(reference, x)
    size = sum(p.numel() * 4 for p in model.parameters())
    largest = (16 * 16 * 9 + 16) * 4  # the middle 3x3 conv must fit to be streamed
    budget = largest + 2000
    assert budget < size
    manager = ModelManager(cpu_info, device_budget_bytes=budget)
    handle = manager.register(model)
    manager.load(handle)
    assert handle.location is Location.PARTIAL
    assert "3" in handle.streamed_units  # the big conv
    assert torch.allclose(_forward(model, x), expected, atol=1e-6, rtol=0)
    assert largest < manager.peak_device_bytes <= budget


def test_novram_streams_every_layer(cpu_info: DeviceInfo) -> None:
    info = dataclasses.replace(cpu_info, vram_state=VRAMState.NO_VRAM)
    model = linear_stack(4)
    expected = _forward(copy.deepcopy(model), torch.ones(1, 32))
    manager = ModelManager(info, device_budget_bytes=100 * LINEAR_BYTES)
    handle = manager.register(model)
    manager.load(handle)
    assert handle.location is Location.PARTIAL and handle.resident_bytes == 0
    assert len(handle.streamed_units) == 4
    assert torch.equal(_forward(model, torch.ones(1, 32)), expected)
    assert manager.peak_device_bytes == LINEAR_BYTES


def test_too_small_for_one_layer_raises_with_figures(cpu_info: DeviceInfo) -> None:
    manager = ModelManager(cpu_info, device_budget_bytes=LINEAR_BYTES - 1)
    handle = manager.register(linear_stack(2), name="wide")
    with pytest.raises(InsufficientMemoryError, match="wide") as err:
        manager.load(handle)
    assert err.value.needed_bytes == LINEAR_BYTES
    assert "--lowvram" in str(err.value)


@pytest.mark.slow
def test_ram_budget_drops_lru_and_rereads(tmp_path, cpu_info: DeviceInfo) -> None:
    models = {n: linear_stack(6, seed=i) for i, n in enumerate("abc")}
    for n, m in models.items():
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / f"{n}.safetensors"))
    expected = {n: _forward(m, torch.ones(1, 32)) for n, m in models.items()}
    reads: list[str] = []

    def loader(n: str):
        def read():
            reads.append(n)
            return load_file(str(tmp_path / f"{n}.safetensors"))

        return read

    # Device holds one model, RAM holds one offloaded model.
    manager = ModelManager(cpu_info, device_budget_bytes=STACK6, ram_budget_bytes=STACK6)
    handles = {n: manager.register(m, name=n, loader=loader(n)) for n, m in models.items()}
    # Registering three models in RAM exceeded the budget: the two least recently used were dropped.
    assert sum(h.location is Location.DROPPED for h in handles.values()) == 2
    for n in "abcab":
        manager.load(handles[n])
        assert torch.equal(_forward(handles[n].module, torch.ones(1, 32)), expected[n])
        assert manager.ram_bytes <= STACK6
    # a: device, then RAM (when b loaded), dropped when c loaded, so it was re-read for its second use.
    assert handles["a"].load_count >= 1
    assert reads.count("a") == handles["a"].load_count
    assert handles["b"].location is Location.DEVICE
    assert handles["a"].location is Location.OFFLOADED
    assert handles["c"].location is Location.DROPPED
    assert all(p.is_meta for p in handles["c"].module.parameters())


def test_cpu_without_budget_moves_nothing(cpu_info: DeviceInfo) -> None:
    manager = ModelManager(cpu_info)
    handle = manager.register(linear_stack(2))
    with manager.use(handle) as module:
        assert module is handle.module
        assert handle.location is Location.DEVICE
    assert manager.device_capacity_bytes() is None


@pytest.mark.slow
def test_real_unet_partial_loading_matches_full(cpu_info: DeviceInfo) -> None:
    import engine.diffusion.models.unet as unet_mod

    torch.manual_seed(0)
    config = unet_mod.UNetConfig.tiny()
    model = fast(unet_mod.UNetModel(config).eval())
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 16, 16, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 77, config.context_dim, generator=g)
    expected = _forward_unet(reference, x, t, ctx)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = size // 3
    manager = ModelManager(cpu_info, device_budget_bytes=budget)
    handle = manager.register(model, name="tiny-unet")
    manager.load(handle)
    assert handle.location is Location.PARTIAL and handle.streamed_units
    out = _forward_unet(model, x, t, ctx)
    assert (out - expected).abs().max().item() <= 1e-6
    assert manager.peak_device_bytes <= budget


def _forward_unet(model: nn.Module, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, t, context=ctx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_partial_loading_streams_real_copies() -> None:
    from engine.memory.devices import MemoryOptions, select_device

    info = select_device(MemoryOptions())
    model = linear_stack(6)
    x = torch.randn(5, 32)
    expected = _forward(copy.deepcopy(model), x)
    manager = ModelManager(info, device_budget_bytes=4 * LINEAR_BYTES)
    handle = manager.register(model)
    manager.load(handle)
    devices = {p.device.type for p in model.parameters()}
    assert devices == {"cpu", "cuda"}  # resident layers moved, streamed ones left in RAM
    out = _forward(model, x.to(info.compute_device))
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), expected, atol=1e-5)
    assert {p.device.type for p in model.parameters()} == {"cpu", "cuda"}  # copies gone after forward
    manager.unload_all()
    assert {p.device.type for p in model.parameters()} == {"cpu"}


class _OwnsAndWraps(nn.Module):
    """A unit that owns a tensor and calls a child inside its forward: both copies are alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((WIDTH, WIDTH), 0.5))
        self.inner = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) @ self.scale


def test_nested_streamed_units_stay_within_budget(cpu_info: DeviceInfo) -> None:
    torch.manual_seed(0)
    model = fast(nn.Sequential(_OwnsAndWraps(), _OwnsAndWraps(), _OwnsAndWraps()).eval())
    expected = _forward(copy.deepcopy(model), torch.ones(2, WIDTH))
    pair = WIDTH * WIDTH * 4 + LINEAR_BYTES  # a wrapper's own tensor + its child's, streamed together
    budget = pair + LINEAR_BYTES
    manager = ModelManager(cpu_info, device_budget_bytes=budget)
    handle = manager.register(model)
    manager.load(handle)
    assert handle.location is Location.PARTIAL
    assert torch.equal(_forward(model, torch.ones(2, WIDTH)), expected)
    assert manager.peak_device_bytes <= budget
