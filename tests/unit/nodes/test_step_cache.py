"""EasyCache / LazyCache on a tiny random SD1 checkpoint: threshold 0 reproduces the uncached sampling
exactly, a large threshold skips UNet evaluations (counted on the UNet's time embedding, which runs once
per real evaluation) while the result stays close, and steps outside [start_percent, end_percent] always
evaluate the UNet."""

from __future__ import annotations

import pytest
import torch

from engine.api import sampling
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context, sampling_library

L, C = builtin("loaders"), builtin("step_cache")
NODES = {"EasyCache": C.easy_cache, "LazyCache": C.lazy_cache}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("step_cache_env")
    write_tiny_checkpoint(root / "models" / "checkpoints" / "a.safetensors", "sd1", seed=3)
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    model, _, _ = L.checkpoint_loader_simple(ckpt_name="a.safetensors", context=ctx)
    gen = torch.Generator().manual_seed(11)
    conds = {name: [[torch.randn(1, 5, 32, generator=gen), {}]] for name in ("positive", "negative")}
    return model, conds


def run(model, conds, sigmas):
    """(samples, timesteps of the real UNet evaluations) of a 2-latent CFG euler run."""
    evaluated: list[float] = []
    current: list[float] = []
    pre = model.unet.register_forward_pre_hook(
        lambda _m, args: current.__setitem__(slice(None), [float(args[1].reshape(-1)[0])])
    )
    hook = model.unet.time_embed.register_forward_hook(lambda *_: evaluated.append(current[0]))
    try:
        guider = sampling.Guider(model, "cfg", conds, 4.0)
        latent = {"samples": torch.zeros(2, 4, 16, 16)}
        spec = sampling_library().sampler("euler")
        out, _ = sampling.custom_sample(sampling.RandomNoise(7), guider, spec, sigmas, latent)
    finally:
        pre.remove()
        hook.remove()
    return out["samples"], evaluated


def schedule(model, steps=12):
    ms = model.model_sampling
    return sampling.karras_sigmas(steps, float(ms.sigma_max), float(ms.sigma_min), 7.0)


@pytest.mark.parametrize("node", list(NODES))
def test_threshold_zero_is_exactly_the_uncached_sampling(env, node):
    model, conds = env
    sigmas = schedule(model)
    ref, ref_calls = run(model, conds, sigmas)
    (cached,) = NODES[node](
        model=model, reuse_threshold=0.0, start_percent=0.0, end_percent=1.0, verbose=True
    )
    out, calls = run(cached, conds, sigmas)
    assert torch.equal(out, ref)
    assert len(calls) == len(ref_calls) == len(sigmas) - 1
    assert "easycache" not in model.model_options["transformer_options"]  # the input MODEL is unchanged


@pytest.mark.parametrize("node", list(NODES))
def test_large_threshold_skips_unet_calls_and_stays_close(env, node):
    model, conds = env
    sigmas = schedule(model, 16)
    ref, ref_calls = run(model, conds, sigmas)
    (cached,) = NODES[node](
        model=model, reuse_threshold=0.05, start_percent=0.0, end_percent=1.0, verbose=False
    )
    out, calls = run(cached, conds, sigmas)
    # Measured: EasyCache 10 of 16 evaluations (relative difference 0.05), LazyCache 7 of 16 (0.085).
    assert len(calls) <= len(ref_calls) - 4
    rel = float((out - ref).norm() / ref.norm())
    assert rel < REL_TOL[node], rel
    # A second run of the same MODEL starts from a clean cache: the same calls and result.
    again, calls_again = run(cached, conds, sigmas)
    assert torch.equal(again, out) and calls_again == calls


@pytest.mark.parametrize("node", list(NODES))
def test_steps_outside_the_range_always_evaluate(env, node):
    model, conds = env
    sigmas = schedule(model, 16)
    ms = model.model_sampling
    start, end = 0.3, 0.8
    (cached,) = NODES[node](
        model=model, reuse_threshold=3.0, start_percent=start, end_percent=end, verbose=False
    )
    _, calls = run(cached, conds, sigmas)
    lo, hi = ms.percent_to_sigma(end), ms.percent_to_sigma(start)
    steps = [float(s) for s in sigmas[:-1]]
    outside = [s for s in steps if s > hi or s <= lo]
    inside = [s for s in steps if lo < s <= hi]
    assert outside and len(inside) >= 4
    t_of = {s: float(ms.model_timestep(torch.tensor([s]))[0]) for s in steps}
    for s in outside:
        assert any(abs(t - t_of[s]) < 1e-3 for t in calls), s
    assert len(calls) < len(steps)  # and inside the range some were skipped


REL_TOL = {"EasyCache": 0.08, "LazyCache": 0.12}


def test_lazy_cache_leaves_the_other_parts_of_a_dual_guider_uncached(env):
    """DualCFGGuider runs three guided predictions at each sigma; LazyCache follows the first one only, so
    the other two (same sigma, zero input change) are never answered from the first one's cache."""
    model, conds = env
    sigmas = schedule(model, 8)
    (cached,) = C.lazy_cache(
        model=model, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False
    )
    dual = {"cond1": conds["positive"], "cond2": conds["negative"], "negative": conds["negative"]}
    evaluated = []
    hook = cached.unet.time_embed.register_forward_hook(lambda *_: evaluated.append(1))
    try:
        guider = sampling.Guider(cached, "dual", dual, 4.0, 2.0)
        spec = sampling_library().sampler("euler")
        sampling.custom_sample(
            sampling.RandomNoise(7), guider, spec, sigmas, {"samples": torch.zeros(1, 4, 16, 16)}
        )
    finally:
        hook.remove()
    steps = len(sigmas) - 1
    assert 2 * steps <= len(evaluated) < 3 * steps  # the first part skipped some steps, the others none
