"""torch.compile of the diffusion networks (engine.diffusion.compiling), on a tiny random SD1 checkpoint:
the TorchCompileModel node and `--compile` really run compiled code, a seed or prompt change reuses the
compiled graphs (dynamo's counters and `error_on_recompile`), compiled output is within 1e-3 of eager, and a
weight patch added after compilation is what the compiled code computes with (no stale weights).

Dynamo's recompile checks use the "eager" backend (the guards are the same for every backend, and
tracing without inductor keeps them quick); the numeric checks use inductor, as users do."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from engine.diffusion.compiling import CompileSettings, compiled_twins, network_for, settings_for
from engine.folders import Folders
from engine.handles.sampling import ksample
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context, sampling_library

L, P = builtin("loaders"), builtin("model_patches")
SIGMA = torch.tensor([2.5])


def load(root, options: MemoryOptions) -> tuple:
    """A fresh checkpoint load (MODEL, VAE): compiled twins live on the modules, so no test sees another's."""
    path = root / "models" / "checkpoints" / "a.safetensors"
    if not path.exists():
        write_tiny_checkpoint(path, "sd1", seed=21)
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(options)))[0]
    model, _, vae = L.checkpoint_loader_simple(ckpt_name="a.safetensors", context=ctx)
    return model, vae


@pytest.fixture
def env(tmp_path):
    return load(tmp_path, MemoryOptions())


def conds(seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 5, 32, generator=gen), {}]]


def sample(model, seed: int, prompt: int) -> torch.Tensor:
    out = ksample(
        model, seed=seed, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
        positive=conds(prompt), negative=conds(prompt + 100), latent={"samples": torch.zeros(1, 4, 16, 16)},
        library=sampling_library(),
    )  # fmt: skip
    return out["samples"]  # type: ignore[no-any-return]


def predict(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), model.use():
        dm = model.diffusion_model()
        return dm.apply(x, SIGMA, context=conds(1)[0][0])


def eager_clone(model):
    m = model.clone()
    m.compile_settings = None
    return m


@pytest.mark.slow
def test_seed_and_prompt_changes_reuse_the_compiled_graphs(env):
    model, _ = env
    m = model.clone()
    m.compile_settings = CompileSettings(backend="eager")
    graphs = counters["stats"]["unique_graphs"]
    first = sample(m, seed=1, prompt=1)
    assert counters["stats"]["unique_graphs"] > graphs  # it did trace the UNet
    assert len(compiled_twins(model.unet)) == 1
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        other_seed = sample(m, seed=2, prompt=1)
        other_prompt = sample(m, seed=2, prompt=2)
        again = sample(m.clone(), seed=1, prompt=1)  # a clone of the compiled model shares the twin
    assert counters["stats"]["unique_graphs"] == graphs
    assert len(compiled_twins(model.unet)) == 1
    assert not torch.equal(first, other_seed) and not torch.equal(other_seed, other_prompt)
    torch.testing.assert_close(again, first)


def test_cli_flag_reaches_every_model_of_the_manager(tmp_path):
    from engine.cli import build_parser, memory_options_from_args

    options = memory_options_from_args(build_parser().parse_args(["run", "--compile", "wf.json"]))
    assert options.compile
    model, vae = load(tmp_path, options)
    assert settings_for(model) == CompileSettings() and settings_for(vae) == CompileSettings()
    assert network_for(model, model.unet) is network_for(model.clone(), model.unet)  # one twin per module


def test_without_a_request_the_module_runs_eagerly(env):
    model, vae = env
    assert settings_for(model) is None and network_for(model, model.unet) is model.unet
    assert not compiled_twins(model.unet)


def test_cudagraphs_off_cuda_compiles_with_inductor():
    assert CompileSettings("cudagraphs").for_device(torch.device("cpu")) == CompileSettings("inductor")
    assert CompileSettings("cudagraphs").for_device(torch.device("cuda")).backend == "cudagraphs"


@pytest.mark.slow
def test_torch_compile_model_node_matches_eager_and_sees_later_patches(env):
    model, _ = env
    (compiled,) = P.torch_compile_model(model=model, backend="inductor")
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5)) * 2.5
    eager = predict(model, x)
    got = predict(compiled, x)
    assert len(compiled_twins(model.unet)) == 1  # the node's clone really ran compiled code
    assert (got - eager).abs().max() <= 1e-3
    # A LoRA-style patch added after compilation: the compiled code must compute with the patched weight.
    key = "input_blocks.1.1.proj_in.weight"
    weight = dict(model.unet.named_parameters())[key]
    patched = compiled.clone()
    patched.add_patches({key: torch.randn_like(weight) * 0.5})
    want = predict(eager_clone(patched), x)
    assert (want - eager).abs().max() > 1e-2  # the patch matters
    assert (predict(patched, x) - want).abs().max() <= 1e-3
    assert (predict(compiled, x) - eager).abs().max() <= 1e-3  # and is removed again for the unpatched clone


@pytest.mark.slow
def test_compile_flag_decodes_within_tolerance_of_eager(tmp_path):
    _, vae = load(tmp_path, MemoryOptions())
    _, compiled_vae = load(tmp_path, MemoryOptions(compile=True))  # the same weights, compiled
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    eager = vae.decode(latent)
    got = compiled_vae.decode(latent)
    assert compiled_twins(compiled_vae.module) and not compiled_twins(vae.module)
    assert (got - eager).abs().max() <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_flow_transformers_compile_without_recompiles(tmp_path, family):
    from engine.diffusion.models import flux, mmdit
    from tests.factories.flow_checkpoints import write_flow_file

    config = flux.TINY if family == "flux" else mmdit.TINY
    write_flow_file(tmp_path / "models" / "diffusion_models" / "m.safetensors", family, config=config, layout="diffusion_model")  # fmt: skip
    ctx = node_context(
        folders=Folders.create(tmp_path), manager=ModelManager(select_device(MemoryOptions()))
    )[0]
    (model,) = L.unet_loader(unet_name="m.safetensors", weight_dtype="default", context=ctx)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))

    def flow_predict(m, prompt: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(prompt)
        context, pooled = torch.randn(1, 6, 40, generator=gen), torch.randn(1, 24, generator=gen)
        with torch.no_grad(), m.use():
            dm = m.diffusion_model()
            y = dm.encode_adm({"pooled_output": pooled, "guidance": 3.5}, 64, 64)
            return dm.apply(x, torch.tensor([0.7]), context=context, y=y)

    compiled = model.clone()
    compiled.compile_settings = CompileSettings(backend="eager")
    torch.testing.assert_close(flow_predict(compiled, 1), flow_predict(model, 1), rtol=0, atol=1e-5)
    assert len(compiled_twins(model.unet)) == 1
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(flow_predict(compiled, 2), flow_predict(model, 2), rtol=0, atol=1e-5)
