"""The sampling library is a runtime service: built once by the runtime, handed to every entry point;
progress goes from the samplers' one callback shape (StepInfo) to context.progress through one adapter."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.diffusion.sampling import ksampler
from engine.execution.context import SAMPLERS, ExecutionContext, InterruptFlag
from engine.execution.events import NodeProgress
from engine.handles import load_checkpoint_handles
from engine.handles import sampling as hs
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[3]
BUILDERS = {"default_sampler_registry", "default_scheduler_registry"}
# The one place the built-in library is constructed (at start-up); registry.py defines the builders.
ALLOWED = {Path("engine/runtime.py")}


def _builder_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in BUILDERS:
                lines.append(node.lineno)
    return lines


def _referenced_as_value(path: Path) -> list[int]:
    """Builders passed around uncalled (e.g. `field(default_factory=default_sampler_registry)`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Name)
        and n.id in BUILDERS
        and isinstance(n.ctx, ast.Load)
        and id(n) not in called
    ]


def test_only_the_runtime_builds_the_builtin_registries():
    offenders = []
    for folder in ("engine", "nodes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel in ALLOWED:
                continue
            for line in _builder_calls(path) + _referenced_as_value(path):
                offenders.append(f"{rel}:{line}")
    assert offenders == [], "built-in registries rebuilt outside engine/runtime.py: " + ", ".join(offenders)
    assert _builder_calls(ROOT / "engine/runtime.py"), "the runtime no longer builds the library"


@pytest.mark.parametrize("fn", [ksampler.sample, ksampler.calculate_sigmas, ksampler.ksampler_sigmas])
def test_entry_points_require_the_registries(fn):
    params = inspect.signature(fn).parameters
    for name in ("samplers", "schedulers"):
        if name in params:
            assert params[name].default is inspect.Parameter.empty, f"{fn.__name__}({name}=...) has a default"
    assert "schedulers" in params


def test_sampling_library_has_no_builtin_defaults():
    with pytest.raises(TypeError):
        hs.SamplingLibrary()  # type: ignore[call-arg]


# ---- progress: sampler -> StepReporter -> context.progress -> sink ----------------------------------


class _Sink:
    def __init__(self, previews: bool) -> None:
        self.wants_previews = previews
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    @property
    def reports(self) -> list[tuple[int, int, Any]]:
        return [(e.value, e.max, e.preview) for e in self.events if isinstance(e, NodeProgress)]


def _context(library: hs.SamplingLibrary, previews: bool) -> tuple[ExecutionContext, _Sink]:
    sink = _Sink(previews)
    context = ExecutionContext(
        prompt_id="p",
        node_id="3",
        node_type="KSampler",
        sink=sink,
        interrupt=InterruptFlag(),
        services={SAMPLERS: library},
    )
    return context, sink


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random SD1 checkpoint's MODEL and prompts (read-only in these tests)."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "sd1.safetensors", "sd1", seed=1)
    manager = ModelManager(select_device(MemoryOptions()))
    model, clip, _ = load_checkpoint_handles(path, manager=manager, want_vae=False)
    assert clip is not None
    return model, clip.encode_conditioning("a red house"), clip.encode_conditioning("")


# heun and dpmpp_2s_ancestral evaluate the model twice per step; dpm_2 drops the penultimate sigma.
@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2s_ancestral", "dpm_2"])
@pytest.mark.parametrize("previews", [True, False])
def test_ksample_reports_each_step_once_to_the_sink(tiny, library, name, previews):
    model, pos, neg = tiny
    context, sink = _context(library, previews)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    options = dict(seed=1, steps=4, cfg=5.0, sampler_name=name, scheduler="normal")
    hs.ksample(
        model, **options, positive=pos, negative=neg, latent=latent, report=context.progress, library=library
    )
    assert [r[:2] for r in sink.reports] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    if previews:
        assert all(r[2].mode == "RGB" and r[2].size == (8, 8) for r in sink.reports)
    else:
        assert all(r[2] is None for r in sink.reports)  # the CLI's sink: nothing rendered


def test_custom_sample_reports_each_step_and_returns_the_last_estimate(tiny, library):
    model, pos, neg = tiny
    context, sink = _context(library, previews=False)
    guider = hs.Guider(model, "cfg", {"positive": pos, "negative": neg}, cfg=5.0)
    sigmas = hs.scheduler_sigmas(model, "karras", 3, library=library)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    noise = hs.RandomNoise(2)
    out, denoised = hs.custom_sample(
        noise, guider, library.sampler("euler"), sigmas, latent, report=context.progress
    )
    assert sink.reports == [(1, 3, None), (2, 3, None), (3, 3, None)]
    # Euler's last step goes to sigma 0, where the output is the last clean-latent estimate.
    torch.testing.assert_close(denoised["samples"], out["samples"])
    quiet, quiet_denoised = hs.custom_sample(noise, guider, library.sampler("euler"), sigmas, latent)
    assert torch.equal(quiet["samples"], out["samples"])
    assert torch.equal(quiet_denoised["samples"], denoised["samples"])
