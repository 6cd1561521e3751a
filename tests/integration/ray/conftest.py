"""Fixtures for the Ray executor tests: one local Ray instance and one pool of 2 CPU workers per module
(starting them takes seconds), every test starting from emptied workers (`pool` resets them) and its own
server: own output folder, queue file and WebSocket hub (tests/integration/ray/helpers.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.folders import Folders
from tests.integration.ray.helpers import CHECKPOINTS, STUB_PACK


@pytest.fixture(scope="module")
def shared_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only inputs shared by the module: two tiny checkpoints and the stub node pack."""
    from tests.factories.checkpoints import write_tiny_checkpoint

    base = tmp_path_factory.mktemp("ray_shared")
    for name, seed in CHECKPOINTS.items():
        write_tiny_checkpoint(base / "models" / "checkpoints" / name, "sd1", seed=seed)
    pack = base / "custom_nodes" / "ray_stub_pack"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent(STUB_PACK))
    return base


@pytest.fixture(scope="module")
def ray_pool(shared_base: Path) -> Iterator[Any]:
    """A local Ray instance (2 CPUs) and a pool of 2 workers, for the whole module."""
    ray = pytest.importorskip("ray")
    from engine.scaleout.actor import WorkerSpec
    from engine.scaleout.pool import WorkerPool

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    pool = WorkerPool(WorkerSpec(Folders.create(shared_base), preview_method="latent2rgb"), workers=2)
    try:
        pool.start()
        pool.wait_ready(300)
        yield pool
    finally:
        pool.close()
        ray.shutdown()


@pytest.fixture
def pool(ray_pool: Any) -> Any:
    """The module's pool, emptied: no cached outputs, no models held, every worker up."""
    ray_pool.reset(300)
    return ray_pool
