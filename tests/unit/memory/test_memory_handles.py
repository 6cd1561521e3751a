"""MODEL, CLIP and VAE handles share one managed-handle base: clones share the weights and keep their own
patches, `use()` loads through the manager, and patchers come only from the manager that registered the
model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.handles import ManagedHandle, load_checkpoint_handles
from engine.memory.devices import DeviceInfo
from engine.memory.manager import Location, ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint


@pytest.fixture
def handles(tmp_path: Path):
    path = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1", seed=7)
    manager = ModelManager(DeviceInfo.cpu())
    model, clip, vae = load_checkpoint_handles(path, manager=manager)
    assert clip is not None and vae is not None
    return manager, (model, clip, vae)


def test_each_handle_clones_with_its_own_patches(handles) -> None:
    _, all_handles = handles
    for handle in all_handles:
        assert isinstance(handle, ManagedHandle)
        key, weight = next((k, v) for k, v in handle.module.state_dict().items() if v.is_floating_point())
        clone = handle.clone()
        assert type(clone) is type(handle) and clone.module is handle.module
        assert clone.add_patches({key: torch.ones_like(weight)}) == [key]
        assert key in clone.patcher.patches and key not in handle.patcher.patches
        with clone.use() as module:  # the clone's patch is written in while it is in use...
            assert torch.equal(module.state_dict()[key], weight + 1)
        with handle.use() as module:  # ...and the original sees its own weights again
            assert torch.equal(module.state_dict()[key], weight)


def test_use_loads_through_the_manager(handles) -> None:
    manager, (model, _, vae) = handles
    assert vae.location is Location.OFFLOADED
    with vae.use():
        assert vae.location is Location.DEVICE
    manager.unload_all()
    assert vae.location is model.location is Location.OFFLOADED


def test_patchers_come_from_the_manager_that_registered_the_model(handles) -> None:
    manager, (model, _, _) = handles
    managed = model.patcher.handle
    assert managed is not None and manager.patcher(managed).module is model.module
    other = ModelManager(DeviceInfo.cpu())
    with pytest.raises(ValueError, match="not registered"):
        other.patcher(managed)
