"""Weight patches: math of each kind, exact removal, clones sharing storage, manager integration."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.memory.devices import DeviceInfo
from engine.memory.manager import Location, ModelManager
from engine.memory.patcher import ModelPatcher
from engine.memory.weight_patches import DiffPatch, LoRAPatch

WIDTH = 32
LINEAR_BYTES = (WIDTH * WIDTH + WIDTH) * 4


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bit_identical(module: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    # Compare the raw bits (an integer view), so that -0.0 vs 0.0 or NaN payloads would also count.
    for k, v in module.state_dict().items():
        a, b = v.detach().contiguous(), snapshot[k].contiguous()
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        if not torch.equal(a.view(ints), b.view(ints)):
            return False
    return True


def test_lora_and_diff_math(make_linear_stack) -> None:
    model = make_linear_stack(2)
    base = model[0].weight.detach().clone()
    up, down = _rand(WIDTH, 4, seed=1), _rand(4, WIDTH, seed=2)
    diff = _rand(WIDTH, WIDTH, seed=3)
    p = ModelPatcher(model)
    added = p.add_patches({"0.weight": LoRAPatch(up, down, alpha=2.0)}, strength_patch=0.5)
    p.add_patches({"0.weight": diff, "no.such.key": diff}, strength_patch=0.25, strength_model=0.9)
    assert added == ["0.weight"]
    p.apply()
    # W' = (W + 0.5 * up@down * alpha/rank) * 0.9 + 0.25 * diff (entries applied in order)
    expected = (base + 0.5 * (up @ down) * (2.0 / 4)) * 0.9 + 0.25 * diff
    assert torch.allclose(model[0].weight, expected, atol=1e-5)
    p.remove()
    assert torch.equal(model[0].weight, base)


def test_lora_with_mid_equals_composed_convolutions() -> None:
    # LoCon/Tucker: down 1x1 conv, mid kxk conv, up 1x1 conv composed == one conv with the patch delta.
    down, mid, up = _rand(3, 8, 1, 1, seed=1), _rand(3, 3, 3, 3, seed=2), _rand(6, 3, 1, 1, seed=3)
    weight = torch.zeros(6, 8, 3, 3)
    delta = LoRAPatch(up, down, alpha=None, mid=mid).delta(weight).reshape(weight.shape)
    x = _rand(1, 8, 10, 10, seed=4)
    composed = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    assert torch.allclose(F.conv2d(x, delta, padding=1), composed, atol=1e-4)


def test_shape_mismatch_names_the_key(make_linear_stack) -> None:
    p = ModelPatcher(make_linear_stack(1))
    p.add_patches({"0.weight": DiffPatch(torch.ones(3, 3))})
    with pytest.raises(ValueError, match="0.weight"):
        p.apply()


def test_strict_unknown_keys() -> None:
    p = ModelPatcher(nn.Linear(2, 2))
    with pytest.raises(KeyError, match="missing.weight"):
        p.add_patches({"missing.weight": torch.zeros(2, 2)}, strict=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_100_apply_remove_cycles_are_bit_identical(make_linear_stack, dtype: torch.dtype) -> None:
    model = make_linear_stack(3).to(dtype)
    snapshot = _snapshot(model)
    a = ModelPatcher(model)
    a.add_patches({"0.weight": LoRAPatch(_rand(WIDTH, 4, seed=1), _rand(4, WIDTH, seed=2), alpha=1.0)})
    b = a.clone()
    b.add_patches({"2.weight": _rand(WIDTH, WIDTH, seed=5) * 0.01, "0.bias": _rand(WIDTH, seed=6)})
    for i in range(100):
        (a if i % 2 else b).apply()
        assert not _bit_identical(model, snapshot)
        if i % 3 == 0:
            (b if i % 2 else a).apply()  # switching clones re-patches from the originals
        a.remove()
        assert _bit_identical(model, snapshot)


def test_clones_share_base_storage(make_linear_stack) -> None:
    model = make_linear_stack(3)
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    base = ModelPatcher(model)
    c1, c2 = base.clone(), base.clone()
    c1.add_patches({"0.weight": torch.ones(WIDTH, WIDTH)})
    c2.add_patches({"0.weight": -torch.ones(WIDTH, WIDTH), "2.weight": torch.ones(WIDTH, WIDTH)})
    assert c1.module is c2.module is model
    assert c1.patch_state is c2.patch_state
    assert c1.patches_uuid != c2.patches_uuid != base.patches_uuid
    assert "0.weight" not in base.patches  # clone patch lists are independent
    c1.apply()
    c2.apply()
    c2.remove()
    # Same tensors back in place: no copy of the base was ever made per clone.
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == ptrs


def test_manager_applies_clone_patches_and_repatches_on_switch(
    cpu_info: DeviceInfo, make_linear_stack
) -> None:
    model = make_linear_stack(2)
    reference = copy.deepcopy(model)
    x = _rand(3, WIDTH, seed=9)
    manager = ModelManager(cpu_info, device_budget_bytes=4 * LINEAR_BYTES)
    base = manager.patcher(manager.register(model, name="m"))
    assert base.handle is manager.handle_for(model)
    d1, d2 = _rand(WIDTH, WIDTH, seed=1) * 0.1, _rand(WIDTH, WIDTH, seed=2) * 0.1
    c1, c2 = base.clone(), base.clone()
    c1.add_patches({"0.weight": d1})
    c2.add_patches({"0.weight": d2})

    def expected(delta: torch.Tensor | None) -> torch.Tensor:
        ref = copy.deepcopy(reference)
        if delta is not None:
            with torch.no_grad():
                ref[0].weight += delta
        with torch.no_grad():
            return ref(x)

    with torch.no_grad():
        with manager.use(c1) as m:
            assert torch.allclose(m(x), expected(d1), atol=1e-6)
        with manager.use(c2) as m:
            assert torch.allclose(m(x), expected(d2), atol=1e-6)
        with manager.use(base) as m:
            assert torch.equal(m(x), expected(None))
        manager.use(c1)
        manager.unload_all()  # unloading removes patches
    assert not base.patch_state.is_patched
    assert torch.equal(model[0].weight, reference[0].weight)


def test_patches_reach_streamed_layers(cpu_info: DeviceInfo, make_linear_stack) -> None:
    model = make_linear_stack(6)
    reference = copy.deepcopy(model)
    delta = {f"{i}.weight": _rand(WIDTH, WIDTH, seed=i) * 0.05 for i in (0, 10)}  # first and last Linear
    with torch.no_grad():
        for k, d in delta.items():
            reference.get_parameter(k).add_(d)
    manager = ModelManager(cpu_info, device_budget_bytes=4 * LINEAR_BYTES)
    patcher = manager.patcher(manager.register(model))
    patcher.add_patches(delta)
    manager.load(patcher)
    assert patcher.handle is not None and patcher.handle.location is Location.PARTIAL
    assert "10" in patcher.handle.streamed_units
    x = _rand(2, WIDTH, seed=7)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_patches_restore_bit_identical(make_linear_stack) -> None:
    from engine.memory.devices import MemoryOptions, select_device

    info = select_device(MemoryOptions())
    model = make_linear_stack(3).half()
    snapshot = _snapshot(model)
    manager = ModelManager(info)
    base = manager.patcher(manager.register(model))
    a = base.clone()
    a.add_patches({"0.weight": LoRAPatch(_rand(WIDTH, 2, seed=1), _rand(2, WIDTH, seed=2))})
    for _ in range(10):
        manager.load(a)
        assert model[0].weight.device.type == "cuda"
        manager.load(base)
    manager.unload_all()
    assert _bit_identical(model, snapshot)
