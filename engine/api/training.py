"""LoRA training for node code (imports torch): image datasets from folders, the training run on a MODEL,
applying a trained LoRA in memory, the loss curve picture. The implementation is engine.training
(docs/training.md); this module publishes it so node packs depend on `engine.api` only."""

from __future__ import annotations

from engine.training.dataset import DatasetError, list_items, load_images
from engine.training.loop import TrainConfig
from engine.training.loss_graph import draw_loss_graph, loss_graph_array
from engine.training.session import DTYPES, LoraSpec, TrainedLora, apply_trained, train_lora

__all__ = [
    "DTYPES",
    "DatasetError",
    "LoraSpec",
    "TrainConfig",
    "TrainedLora",
    "apply_trained",
    "draw_loss_graph",
    "list_items",
    "load_images",
    "loss_graph_array",
    "train_lora",
]
