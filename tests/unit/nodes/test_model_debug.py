"""ModelComputeDtype on a tiny SD1 checkpoint: the clone's layers really run in the chosen dtype (weights and
activations, observed in a forward hook), the result is the fp32 one to that dtype's precision, and the
original model computes in fp32 again afterwards, bit for bit."""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.sampling.guidance import CFGDenoiser
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

L, C, S, D = builtin("loaders"), builtin("conditioning"), builtin("sampling"), builtin("model_debug")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("compute_dtype")
    write_tiny_checkpoint(root / "models" / "checkpoints" / "a.safetensors", "sd1", seed=1)
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    model, clip, _ = L.checkpoint_loader_simple(ckpt_name="a.safetensors", context=ctx)
    return ctx, model, C.clip_text_encode(text="a boat", clip=clip)[0]


def sample(ctx, model, pos):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return S.ksampler(model, 7, 3, 1.0, "euler", "normal", pos, pos, latent, context=ctx)[0]["samples"]


def test_model_compute_dtype_runs_the_clone_in_that_dtype_only(env):
    ctx, model, pos = env
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    conv = model.unet.get_submodule("input_blocks.0.0")
    # A forward hook (not a pre-hook): it runs inside the manager's per-layer cast, which swaps in the
    # weights the layer computes with.
    hook = conv.register_forward_hook(lambda m, args, out: seen.append((m.weight.dtype, out.dtype)))
    try:
        base = sample(ctx, model, pos)
        assert set(seen) == {(torch.float32, torch.float32)}
        (bf16,) = D.model_compute_dtype(model, "bf16")
        seen.clear()
        low = sample(ctx, bf16, pos)
        assert set(seen) == {(torch.bfloat16, torch.bfloat16)}
        seen.clear()
        again = sample(ctx, model, pos)
        assert set(seen) == {(torch.float32, torch.float32)}
    finally:
        hook.remove()
    assert low.dtype == torch.float32 and not torch.equal(low, base)
    # One model evaluation agrees to bf16 precision (three sampling steps of this random tiny UNet amplify
    # rounding too much to compare).
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3.0])
    outs = []
    for m in (model, bf16):
        with m.use():
            outs.append(CFGDenoiser(m.diffusion_model(), pos, None, 1.0, like=x)(x, sigma))
    assert outs[1].dtype == torch.float32 and not torch.equal(outs[0], outs[1])
    rel = float((outs[1] - outs[0]).norm() / outs[0].norm())
    assert rel < 0.03  # 1.7% here: bf16's 8-bit mantissa through every layer
    assert torch.equal(again, base)
    assert conv.weight.dtype == torch.float32  # stored weights untouched
    (default,) = D.model_compute_dtype(bf16, "default")
    assert torch.equal(sample(ctx, default, pos), base)
    assert model.patcher.compute_dtype is None and bf16.clone().patcher.compute_dtype == torch.bfloat16
