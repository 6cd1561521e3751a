"""The parts of LoRA training on a tiny UNet: adapters, the training target, gradient checkpointing, the
kohya names, interrupt, and that a trained adapter read back by our LoRA parser patches the weights into
exactly what the hooks computed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.diffusion.lora import load_lora, unet_key_map
from engine.diffusion.models.unet import UNetConfig, UNetModel
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from engine.errors import ExecutionInterrupted
from engine.memory.weight_patches import LoHaPatch, LoRAPatch
from engine.training import kohya
from engine.training.adapters import create_adapters, target_modules
from engine.training.loop import (
    TrainConfig,
    TrainingData,
    checkpointed_blocks,
    frozen,
    noised_input_and_target,
    train,
)


@pytest.fixture()
def unet() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(UNetConfig.tiny()).eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.tensor([10.0, 700.0]),
        torch.randn(2, 77, 32, generator=g),
    )


def _data(n: int = 2) -> TrainingData:
    g = torch.Generator().manual_seed(3)
    return TrainingData(
        torch.randn(n, 4, 8, 8, generator=g), [torch.randn(1, 77, 32, generator=g) for _ in range(n)]
    )


def test_targets_are_the_block_projections_and_convs(unet):
    names = set(target_modules(unet))
    for suffix in ("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2"):
        assert any(n.endswith(suffix) for n in names), suffix
    assert "input_blocks.1.0.in_layers.2" in names and "input_blocks.1.0.out_layers.3" in names
    assert "input_blocks.1.1.proj_in" in names
    # the stem, the time embedding and the output conv stay as they are
    assert not any(n.startswith(("input_blocks.0.", "time_embed", "out.")) for n in names)


@pytest.mark.parametrize("algorithm", ["LoRA", "LoHa"])
def test_fresh_adapters_change_nothing_and_detach_restores_exactly(unet, algorithm):
    x, t, c = _inputs()
    with torch.no_grad():
        base = unet(x, t, context=c)
        adapters = create_adapters(unet, algorithm, 4, seed=5)
        adapters.attach(unet)
        assert torch.equal(unet(x, t, context=c), base)  # up / w2a start at zero
        for p in adapters.parameters():
            p.add_(0.01)
        assert not torch.allclose(unet(x, t, context=c), base)
        adapters.detach()
        assert torch.equal(unet(x, t, context=c), base)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_target_is_what_sampling_turns_back_into_x0(prediction):
    """Denoising the training input with the training target as the model output gives x0 back: the
    loop trains exactly the parameterisation that sampling (calculate_denoised) assumes."""
    sampling = ModelSamplingDiscrete(prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0.0, 400.0, 999.0])
    net_in, timestep, target = noised_input_and_target(sampling, x0, noise, t)
    sigma = sampling.sigma(t)
    x_ve = x0 + noise * sigma.reshape(-1, 1, 1, 1)
    assert torch.allclose(net_in, x_ve / torch.sqrt(sigma**2 + 1).reshape(-1, 1, 1, 1), atol=1e-5)
    assert torch.equal(timestep, t)
    assert torch.allclose(sampling.calculate_denoised(sigma, target, x_ve), x0, atol=1e-4)


def test_checkpointing_gives_the_same_gradients_and_leaves_the_unet_as_it_was(unet):
    x, t, c = _inputs()
    adapters = create_adapters(unet, "LoRA", 4, seed=2)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(0.02)
    grads = []
    adapters.attach(unet)
    with frozen(unet):
        for enabled in (False, True):
            for p in adapters.parameters():
                p.requires_grad_(True)
                p.grad = None
            with checkpointed_blocks(unet, enabled):
                unet(x, t, context=c).square().mean().backward()
            grads.append([p.grad.clone() for p in adapters.parameters()])
    adapters.detach()
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert all("forward" not in vars(block) for block in unet.input_blocks)
    assert all(p.requires_grad for p in unet.parameters())  # flags restored after freezing


def test_interrupt_keeps_the_steps_done(unet):
    adapters = create_adapters(unet, "LoRA", 2)
    seen = []

    def report(step: int, total: int, loss: float) -> None:
        seen.append((step, total))
        if step == 3:
            raise ExecutionInterrupted("stop")

    result = train(
        unet,
        ModelSamplingDiscrete(),
        _data(),
        adapters,
        TrainConfig(steps=10, gradient_checkpointing=False),
        report,
    )
    assert result.interrupted and result.steps_done == 3 and len(result.losses) == 3
    assert seen == [(1, 10), (2, 10), (3, 10)]
    assert any(
        p.abs().sum() > 0
        for n, p in adapters.adapters["input_blocks.1.1.proj_in"].named_parameters()
        if "up" in n
    )


def test_grad_accumulation_averages_micro_batches(unet):
    """With SGD, two accumulated micro-batches of 1 give the mean of their gradients: one accumulated step
    equals the loss average, reported per optimizer step."""
    adapters = create_adapters(unet, "LoRA", 2)
    config = TrainConfig(steps=2, grad_accumulation=2, optimizer="SGD", gradient_checkpointing=False)
    result = train(unet, ModelSamplingDiscrete(), _data(), adapters, config)
    assert result.steps_done == 2 and len(result.losses) == 2 and all(v > 0 for v in result.losses)


@pytest.mark.parametrize("algorithm", ["LoRA", "LoHa"])
def test_written_file_patches_the_weights_into_what_the_hooks_computed(unet, algorithm):
    """kohya names -> our parser: every key matched, one patch per adapter, and the patched UNet computes
    what the hooked adapters computed."""
    x, t, c = _inputs()
    adapters = create_adapters(unet, algorithm, 4, alpha=2.0, seed=1)
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.05)
        adapters.attach(unet)
        hooked = unet(x, t, context=c)
        adapters.detach()
    sd = kohya.adapters_state_dict(adapters, kohya.kohya_names(unet, "sd1"))
    assert all(k.startswith("lora_unet_") for k in sd)
    assert any(
        k.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.") for k in sd
    )
    report = load_lora(sd, {"unet": unet_key_map(unet.state_dict().keys())})
    assert report.unmatched == []
    patches = report.patches["unet"]
    assert set(patches) == {f"{m}.weight" for m in adapters.adapters}
    assert all(isinstance(p, LoRAPatch if algorithm == "LoRA" else LoHaPatch) for p in patches.values())
    with torch.no_grad():
        state = unet.state_dict()
        for key, patch in patches.items():
            state[key].add_(patch.delta(state[key]).reshape(state[key].shape))
        assert torch.allclose(unet(x, t, context=c), hooked, atol=1e-4)


def test_continuing_loads_the_files_adapters(unet):
    first = create_adapters(unet, "LoRA", 4, seed=1)
    with torch.no_grad():
        for p in first.parameters():
            p.normal_()
    names = kohya.kohya_names(unet, "sd1")
    sd = kohya.adapters_state_dict(first, names)
    again = create_adapters(unet, "LoRA", 4, seed=9)
    assert kohya.load_into(again, names, sd) == len(first.adapters)
    for module, adapter in again.adapters.items():
        assert torch.equal(adapter.lora_up, first.adapters[module].lora_up)
    assert kohya.steps_of(Path("x_120_steps_00001_.safetensors"), {}) == 120
    assert kohya.steps_of(Path("x.safetensors"), {"ss_steps": "7"}) == 7


def test_unknown_algorithm_is_refused_with_the_choices(unet):
    with pytest.raises(ValueError, match="LoRA, LoHa"):
        create_adapters(unet, "OFT", 4)


def test_bf16_training_and_bf16_lora_weights(unet):
    """ComfyUI's defaults: autocast to bf16 for the UNet, adapters (and the file) in bf16."""
    adapters = create_adapters(unet, "LoRA", 2, dtype=torch.bfloat16)
    config = TrainConfig(
        steps=2, training_dtype=torch.bfloat16, learning_rate=1e-2, gradient_checkpointing=True
    )
    result = train(unet, ModelSamplingDiscrete(), _data(), adapters, config)
    assert result.steps_done == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    sd = kohya.adapters_state_dict(adapters, kohya.kohya_names(unet, "sd1"), torch.bfloat16)
    ups = [v for k, v in sd.items() if k.endswith("lora_up.weight")]
    assert all(v.dtype == torch.bfloat16 for v in ups) and any(v.abs().sum() > 0 for v in ups)
    assert sd[next(k for k in sd if k.endswith(".alpha"))].dtype == torch.float32
