"""The training loop: frozen UNet + trainable adapters, the model's own noise schedule and prediction.

One step (Ho et al. 2020, "DDPM", Algorithm 1, in the parameterisation of the model): draw a batch of
latents x0 (already in the model's latent space), training timesteps t uniform over the schedule and
noise n; noise x0 to the network input exactly as sampling does (``ModelSampling.noise_scaling`` then
``calculate_input``); the target is what the network predicts: n for eps models, v = alpha·n − sigma·x0
(Salimans & Ho 2022) for v models, n − x0 for flow models. The loss (MSE, L1, Huber or smooth L1)
between prediction and target trains only the adapters; gradients are accumulated over
``grad_accumulation`` micro-batches per optimizer step.

Gradient checkpointing (Chen et al. 2016) wraps each residual and transformer block's forward in
``torch.utils.checkpoint`` for the run only (an instance attribute, removed afterwards), so the UNet's
own code and its inference behaviour are unchanged; activations inside a block are recomputed in the
backward pass instead of being kept.

Progress and interrupt come in as one callback, ``report(step, total, loss)``, called after every
optimizer step; if it raises ``ExecutionInterrupted`` the loop stops there and returns the steps done.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.diffusion.models.unet_blocks import BasicTransformerBlock, ResBlock
from engine.diffusion.sampling.model_sampling import ModelSampling
from engine.errors import ExecutionInterrupted

from .adapters import AdapterSet

OPTIMIZERS = ("AdamW", "Adam", "SGD", "RMSprop")
LOSSES = ("MSE", "L1", "Huber", "SmoothL1")
_LOSS_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "MSE": F.mse_loss,
    "L1": F.l1_loss,
    "Huber": F.huber_loss,
    "SmoothL1": F.smooth_l1_loss,
}
_CHECKPOINTED = (ResBlock, BasicTransformerBlock)

Report = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 16
    batch_size: int = 1
    grad_accumulation: int = 1
    learning_rate: float = 5e-4
    optimizer: str = "AdamW"
    loss: str = "MSE"
    seed: int = 0
    training_dtype: torch.dtype = torch.float32
    gradient_checkpointing: bool = True


@dataclass
class TrainingData:
    """What is trained on: latents (N, C, h, w) in the model's space, one context (1, T, D) per latent
    and optionally one ADM vector (1, P) per latent (SDXL)."""

    latents: torch.Tensor
    contexts: Sequence[torch.Tensor]
    adm: Sequence[torch.Tensor] | None = None
    transformer_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    losses: list[float]
    steps_done: int
    interrupted: bool


def make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    kinds: dict[str, Callable[..., torch.optim.Optimizer]] = {
        "AdamW": torch.optim.AdamW,
        "Adam": torch.optim.Adam,
        "SGD": torch.optim.SGD,
        "RMSprop": torch.optim.RMSprop,
    }
    if name not in kinds:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    return kinds[name](params, lr=lr)


def _loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in _LOSS_FUNCTIONS:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return _LOSS_FUNCTIONS[name]


def noised_input_and_target(
    sampling: ModelSampling, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(network input, network timestep, target) for latents `x0`, `noise` and training timesteps `t`
    (B,), in the parameterisation of `sampling` (see the module docstring)."""
    sigma = sampling.sigma(t).to(x0.device, torch.float32)
    x = sampling.noise_scaling(sigma, noise, x0)
    net_in = sampling.calculate_input(sigma, x)
    timestep = sampling.model_timestep(sigma).to(x0.device)
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    if sampling.prediction == "eps":
        target = noise
    elif sampling.prediction == "v":
        target = (noise - s * x0) / torch.sqrt(s * s + 1.0)  # alpha·n − sigma_vp·x0 in VE terms
    else:
        target = noise - x0
    return net_in, timestep, target


def _stack_contexts(contexts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Batch contexts of different token counts as ComfyUI concatenates conditionings: each repeated up
    to the least common multiple of the lengths."""
    lengths = [c.shape[1] for c in contexts]
    target = math.lcm(*lengths)
    return torch.cat([c.repeat(1, target // c.shape[1], 1) for c in contexts])


@contextmanager
def checkpointed_blocks(unet: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run every residual and transformer block under torch.utils.checkpoint for the duration of the
    block (see module doc)."""
    blocks: list[nn.Module] = []
    if enabled:
        # Residual and transformer blocks, not whole UNet levels: the cheap layers between them (the
        # transformers' proj_in/proj_out and norm, down/upsampling convs, and their adapters) then run once
        # instead of again in the backward pass - what diffusers checkpoints, 20% fewer forward convs.
        blocks = [m for m in unet.modules() if isinstance(m, _CHECKPOINTED)]

    def wrap(forward: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)

        return run

    for block in blocks:
        block.forward = wrap(block.forward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward


@contextmanager
def frozen(unet: nn.Module) -> Iterator[None]:
    """Base weights get no gradients during training; their flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    unet.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _Batches:
    """Seeded batches: image indices, timesteps and noise, from CPU generators (device independent)."""

    def __init__(self, data: TrainingData, sampling: ModelSampling, config: TrainConfig) -> None:
        self.data = data
        self.sampling = sampling
        self.batch = min(config.batch_size, data.latents.shape[0])
        self.generator = torch.Generator().manual_seed(int(config.seed) % 2**63)
        self.num_timesteps = int(getattr(sampling, "num_timesteps", 1000))

    def draw(
        self, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        n = self.data.latents.shape[0]
        idx = torch.randperm(n, generator=self.generator)[: self.batch]
        x0 = self.data.latents[idx].to(device, torch.float32)
        t = torch.randint(0, self.num_timesteps, (self.batch,), generator=self.generator).float()
        noise = torch.randn(x0.shape, generator=self.generator).to(device)
        net_in, timestep, target = noised_input_and_target(self.sampling, x0, noise, t)
        context = _stack_contexts([self.data.contexts[i] for i in idx.tolist()]).to(device)
        y = None
        if self.data.adm is not None:
            y = torch.cat([self.data.adm[i] for i in idx.tolist()]).to(device)
        return net_in, timestep, context, y, target


class Trainer:
    """One training run's state (optimizer, batches, loss); `step()` is one optimizer step. Use inside
    `session()`, which attaches the adapters, freezes the UNet and turns on checkpointing."""

    def __init__(
        self,
        unet: nn.Module,
        sampling: ModelSampling,
        data: TrainingData,
        adapters: AdapterSet,
        config: TrainConfig,
    ) -> None:
        if data.latents.shape[0] != len(data.contexts):
            raise ValueError(f"{data.latents.shape[0]} latents but {len(data.contexts)} conditionings")
        self.unet, self.data, self.adapters, self.config = unet, data, adapters, config
        self.device = next(unet.parameters()).device
        self.params = list(adapters.parameters())
        self.optimizer = make_optimizer(config.optimizer, self.params, config.learning_rate)
        self.loss_fn = _loss_function(config.loss)
        self.batches = _Batches(data, sampling, config)

    @contextmanager
    def session(self) -> Iterator[Trainer]:
        for p in self.params:
            p.requires_grad_(True)
        self.adapters.attach(self.unet)
        try:
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
                frozen(self.unet),
                checkpointed_blocks(self.unet, self.config.gradient_checkpointing),
            ):
                yield self
        finally:
            self.adapters.detach()
            for p in self.params:
                p.requires_grad_(False)

    def step(self) -> float:
        """One optimizer step over `grad_accumulation` micro-batches; returns their mean loss."""
        config, total = self.config, 0.0
        autocast = config.training_dtype != torch.float32
        for _ in range(config.grad_accumulation):
            net_in, timestep, context, y, target = self.batches.draw(self.device)
            with torch.autocast(self.device.type, dtype=config.training_dtype, enabled=autocast):
                options = dict(self.data.transformer_options)
                out = self.unet(net_in, timestep, context=context, y=y, transformer_options=options)
                loss = self.loss_fn(out.float(), target)
            (loss / config.grad_accumulation).backward()
            total += float(loss.detach()) / config.grad_accumulation
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total


def train(
    unet: nn.Module,
    sampling: ModelSampling,
    data: TrainingData,
    adapters: AdapterSet,
    config: TrainConfig,
    report: Report | None = None,
) -> TrainResult:
    """Train `adapters` (attached to `unet` for the run) on `data`; see the module docstring."""
    trainer = Trainer(unet, sampling, data, adapters, config)
    result = TrainResult([], 0, False)
    with trainer.session():
        for step in range(config.steps):
            loss = trainer.step()
            result.losses.append(loss)
            result.steps_done = step + 1
            if report is None:
                continue
            try:
                report(step + 1, config.steps, loss)
            except ExecutionInterrupted:
                result.interrupted = True
                break
    return result


def evaluate(
    unet: nn.Module,
    sampling: ModelSampling,
    data: TrainingData,
    adapters: AdapterSet | None,
    *,
    seed: int = 1234,
    draws: int = 8,
    loss: str = "MSE",
) -> float:
    """Mean loss over `draws` fixed (seeded) batches of the whole dataset, without training: the same
    probe before and after a run says how much the adapters learned, free of per-step sampling noise."""
    config = TrainConfig(batch_size=data.latents.shape[0], seed=seed)
    batches = _Batches(data, sampling, config)
    device = next(unet.parameters()).device
    loss_fn = _loss_function(loss)
    if adapters is not None:
        adapters.attach(unet)
    try:
        with torch.no_grad():
            values = []
            for _ in range(draws):
                net_in, timestep, context, y, target = batches.draw(device)
                out = unet(
                    net_in, timestep, context=context, y=y, transformer_options=dict(data.transformer_options)
                )
                values.append(float(loss_fn(out.float(), target)))
    finally:
        if adapters is not None:
            adapters.detach()
    return sum(values) / len(values)
