"""RAM readings, the /system_stats body the server assembles from them, and the /free operation."""

from __future__ import annotations

import torch

from engine.memory.devices import DeviceInfo, read_meminfo
from engine.memory.manager import Location, ModelManager
from engine.server.system_stats import system_stats

DEVICE_KEYS = {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"}


def test_read_meminfo_parses_kibibytes(tmp_path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       16384 kB\nMemFree:         1024 kB\nMemAvailable:    8192 kB\n")
    assert read_meminfo(f) == (8192 * 1024, 16384 * 1024)  # (free, total), as every figure pair
    old = tmp_path / "old"
    old.write_text("MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 20 kB\n")
    assert read_meminfo(old) == (35 * 1024, 100 * 1024)
    available, total = read_meminfo(tmp_path / "missing")  # falls back to sysconf
    assert total > 0 and 0 <= available <= total


def test_system_stats_shape(cpu_info: DeviceInfo, make_linear_stack) -> None:
    manager = ModelManager(cpu_info)
    handle = manager.register(make_linear_stack(1), name="m")  # noqa: F841 (the manager holds weak references)
    body = system_stats(cpu_info, manager)
    system = body["system"]
    assert {
        "os",
        "ram_total",
        "ram_free",
        "python_version",
        "pytorch_version",
        "embedded_python",
        "argv",
    } <= set(system)
    assert 0 < system["ram_free"] <= system["ram_total"]
    (device,) = body["devices"]
    assert set(device) == DEVICE_KEYS
    assert device["type"] == cpu_info.compute_device.type
    assert all(isinstance(device[k], int) for k in DEVICE_KEYS - {"name", "type", "index"})
    assert 0 <= device["vram_free"] <= device["vram_total"]
    assert body["models"] == [
        {"name": "m", "location": "offloaded", "size_bytes": (32 * 32 + 32) * 4, "resident_bytes": 0}
    ]


def test_free_endpoint_operation(cpu_info: DeviceInfo, make_linear_stack, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    with_loader = make_linear_stack(2, seed=1)
    path = tmp_path / "m.safetensors"
    save_file(dict(with_loader.state_dict()), str(path))
    manager = ModelManager(cpu_info, device_budget_bytes=10**6)
    a = manager.register(with_loader, name="a", loader=lambda: load_file(str(path)))
    b = manager.register(make_linear_stack(2, seed=2), name="b")
    manager.load(a)
    manager.load(b)
    both = 2 * 2 * (32 * 32 + 32) * 4  # two stacks of two float32 Linear(32, 32) layers, all on the device
    assert manager.free() == {"device_bytes": both, "ram_bytes": 0}
    assert a.on_device and b.on_device  # both flags false: nothing happens
    figures = manager.free(unload_models=True)
    assert figures["device_bytes"] == 0 and a.location is b.location is Location.OFFLOADED
    manager.free(unload_models=True, free_memory=True)
    assert a.location is Location.DROPPED  # re-readable: RAM released
    assert b.location is Location.OFFLOADED  # no loader: must stay in RAM
    with torch.no_grad():
        manager.load(a)
        assert torch.equal(a.module[0].weight, load_file(str(path))["0.weight"])
