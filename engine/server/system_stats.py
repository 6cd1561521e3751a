"""The `/system_stats` body (ComfyUI's response shape), assembled from engine.memory's figures.

Imported by the handler only when the runtime has a device: engine.memory imports torch.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from engine.memory.devices import DeviceInfo, device_memory, read_meminfo
from engine.memory.manager import ModelManager


def device_stats(info: DeviceInfo) -> dict[str, Any]:
    """One entry of `/system_stats` "devices" (ComfyUI's keys): VRAM as the driver sees it, and the part
    torch's caching allocator holds (`torch_vram_total` = reserved, `torch_vram_free` = reserved but unused)."""
    device = info.compute_device
    if device.type == "cuda":
        free_cuda, total = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device)
        active = torch.cuda.memory_stats(device).get("active_bytes.all.current", 0)
        torch_free = reserved - active
        vram_total, vram_free = int(total), int(free_cuda + torch_free)
        torch_total = int(reserved)
    elif device.type == "mps":
        vram_free, vram_total = device_memory(device)
        torch_total = int(getattr(torch.mps, "driver_allocated_memory", lambda: 0)())
        torch_free = max(0, torch_total - int(getattr(torch.mps, "current_allocated_memory", lambda: 0)()))
    else:
        vram_free, vram_total = read_meminfo()
        torch_total, torch_free = vram_total, vram_free
    return {
        "name": info.name,
        "type": device.type,
        "index": device.index,
        "vram_total": int(vram_total),
        "vram_free": int(vram_free),
        "torch_vram_total": int(torch_total),
        "torch_vram_free": int(torch_free),
    }


def system_stats(info: DeviceInfo, manager: ModelManager | None = None) -> dict[str, Any]:
    """The `/system_stats` body: {"system": {...}, "devices": [...]} with ComfyUI's keys. The server adds
    its own version field; with a manager, a "models" section lists where each registered model is."""
    ram_free, ram_total = read_meminfo()
    body: dict[str, Any] = {
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "python_version": sys.version,
            "pytorch_version": torch.__version__,
            "embedded_python": False,
            "argv": list(sys.argv),
        },
        "devices": [device_stats(info)],
    }
    if manager is not None:
        body["models"] = [
            {
                "name": h.name,
                "location": h.location.value,
                "size_bytes": h.size_bytes,
                "resident_bytes": h.resident_bytes,
            }
            for h in manager.models
        ]
    return body
