"""Training a LoRA on a MODEL handle, end to end: what TrainLoraNode runs.

The model is used through the model manager (``ModelHandle.use``: its own weight patches applied, on
the compute device, pinned while training), the LATENT batch is brought into the model's latent space
(``latent_format.process_in``, as sampling does), each CONDITIONING entry gives one context (and for
SDXL the ADM vector). The result is a ``TrainedLora``: the kohya state dict (the LORA_MODEL socket value,
a plain dict of tensors as in ComfyUI) plus the file metadata and the total step count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.diffusion.checkpoints.io import read_state_dict
from engine.diffusion.lora import load_lora, unet_key_map
from engine.handles.model import ModelHandle

from . import kohya
from .adapters import create_adapters
from .loop import Report, TrainConfig, TrainingData, TrainResult, train

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


class TrainedLora(dict[str, torch.Tensor]):
    """The LORA_MODEL value: kohya keys -> tensors, with ``metadata`` (``ss_*``) and total ``steps``."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], steps: int) -> None:
        super().__init__(tensors)
        self.metadata = metadata
        self.steps = steps


@dataclass(frozen=True)
class LoraSpec:
    """The adapter side of a run: algorithm, rank, dtype of the LoRA weights, file to continue from."""

    algorithm: str = "LoRA"
    rank: int = 8
    lora_dtype: torch.dtype = torch.float32
    existing: Path | None = None


def _contexts(positive: Sequence[Any], count: int) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """One (context (1, T, D), options) per latent: a single conditioning is shared by all latents
    (ComfyUI's rule), otherwise there must be one per latent."""
    rows = [(cond[i : i + 1], opts) for cond, opts in positive for i in range(cond.shape[0])]
    if len(rows) == 1 and count > 1:
        rows = rows * count
    if len(rows) != count:
        raise ValueError(
            f"{count} latents but {len(rows)} conditionings: give one conditioning for all images or one "
            "per image (LoadImageTextSetFromFolderNode makes one per image)"
        )
    return rows


def training_data(model: ModelHandle, latents: dict[str, Any], positive: Sequence[Any]) -> TrainingData:
    samples = latents["samples"].float()
    x0 = model.latent_format.process_in(samples)
    rows = _contexts(positive, samples.shape[0])
    adm = None
    if model.adm_builder is not None:
        scale = model.vae_downscale
        height, width = samples.shape[-2] * scale, samples.shape[-1] * scale
        built = [model.adm_builder(opts, width, height) for _, opts in rows]
        if any(a is None for a in built):
            raise ValueError("this model needs pooled text outputs (SDXL): encode the captions with its CLIP")
        adm = [a.float() for a in built if a is not None]
    contexts = [c.float().clone() for c, _ in rows]
    # A private copy of the model's UNet options (attention patches etc. apply while training too).
    options = {k: v for k, v in model.transformer_options.items() if k != "wrappers"}
    return TrainingData(x0.clone(), contexts, adm, options)


def _activation_bytes(data: TrainingData, config: TrainConfig) -> int:
    # A rough bound for the manager's budget: ~150 activations of latent size per UNet level kept for the
    # backward pass (a few with gradient checkpointing), in fp32.
    per_sample = data.latents[0].numel() * 4 * 320
    return (
        per_sample
        * min(config.batch_size, data.latents.shape[0])
        * (8 if config.gradient_checkpointing else 150)
    )


def train_lora(
    model: ModelHandle,
    latents: dict[str, Any],
    positive: Sequence[Any],
    config: TrainConfig,
    spec: LoraSpec,
    report: Report | None = None,
) -> tuple[TrainedLora, TrainResult]:
    """Train a LoRA on `model` (see the module docstring); returns the LoRA and the run's losses."""
    data = training_data(model, latents, positive)
    with model.use(extra_bytes=_activation_bytes(data, config)) as unet:
        adapters = create_adapters(unet, spec.algorithm, spec.rank, dtype=spec.lora_dtype, seed=config.seed)
        names = kohya.kohya_names(unet, str(model.family))
        done_before = 0
        if spec.existing is not None:
            existing = read_state_dict(spec.existing, dtype=torch.float32)
            loaded = kohya.load_into(adapters, names, existing)
            done_before = kohya.steps_of(spec.existing, _file_metadata(spec.existing))
            log.info(
                "continuing %s: %d layers loaded, %d steps done", spec.existing.name, loaded, done_before
            )
        base_hash = kohya.unet_weights_hash(unet)
        result = train(unet, model.model_sampling, data, adapters, config, report)
        tensors = kohya.adapters_state_dict(adapters, names, spec.lora_dtype)
    alphas = {a.alpha for a in adapters.adapters.values()}
    metadata = kohya.training_metadata(
        algorithm=spec.algorithm, rank=spec.rank, alpha=alphas.pop() if len(alphas) == 1 else spec.rank,
        steps=done_before + result.steps_done, learning_rate=config.learning_rate,
        optimizer=config.optimizer, seed=config.seed, base_model_name=model.name,
        base_model_hash=base_hash, family=str(model.family), num_images=data.latents.shape[0],
    )  # fmt: skip
    return TrainedLora(tensors, metadata, done_before + result.steps_done), result


def _file_metadata(path: Path) -> dict[str, str]:
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def apply_trained(model: ModelHandle, lora: dict[str, torch.Tensor], strength: float) -> ModelHandle:
    """A clone of `model` with `lora` (any layout our LoRA reader knows) patched in at `strength`."""
    if strength == 0:
        return model
    report = load_lora(lora, {"unet": unet_key_map(model.unet.state_dict().keys())})
    clone = model.clone()
    clone.add_patches(report.patches.get("unet", {}), strength)
    if report.unmatched:
        log.warning("LoRA: %s", report.summary())
    return clone
