"""Figures for the server's `/system_stats` (ComfyUI's response shape) and RAM readings."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from engine.memory.devices import DeviceInfo
    from engine.memory.manager import ModelManager


def read_meminfo(path: str | os.PathLike[str] = "/proc/meminfo") -> tuple[int, int]:
    """(total, available) RAM in bytes. Linux: /proc/meminfo (MemAvailable, or MemFree+Buffers+Cached on
    kernels before 3.14); elsewhere: sysconf page counts (available then is the free page count)."""
    try:
        fields: dict[str, int] = {}
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                # values are in kB (kibibytes) per proc(5)
                fields[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
        total = fields["MemTotal"]
        available = fields.get("MemAvailable")
        if available is None:
            available = fields.get("MemFree", 0) + fields.get("Buffers", 0) + fields.get("Cached", 0)
        return total, available
    except (OSError, KeyError, ValueError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        avail = os.sysconf("SC_AVPHYS_PAGES") * page
        return int(total), int(avail)
    except (ValueError, OSError, AttributeError):
        return 0, 0


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
        from engine.memory.devices import device_memory

        vram_free, vram_total = device_memory(device)
        torch_total = int(getattr(torch.mps, "driver_allocated_memory", lambda: 0)())
        torch_free = max(0, torch_total - int(getattr(torch.mps, "current_allocated_memory", lambda: 0)()))
    else:
        vram_total, vram_free = read_meminfo()
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
    ram_total, ram_free = read_meminfo()
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
