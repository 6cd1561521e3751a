"""Runtime values that travel on MODEL, CLIP and VAE sockets.

A handle ties pure-torch model code (engine.diffusion) to the memory manager (engine.memory): the weights
live where the manager puts them, and a handle asks for them (`with manager.use(...)`) only while a node
computes with them. Handles are cheap to `clone()`: clones share weights, and keep their own weight patches
(LoRA) and options, so a graph can hold several variants of one checkpoint.

This package sits below the graph: it never imports engine.graph / execution / server (enforced by
tests/unit/engine/test_engine_layers.py). Nodes reach models only through it.
"""

from engine.handles.base import ManagedHandle
from engine.handles.clip import ClipHandle
from engine.handles.loading import (
    ModelFileError,
    load_checkpoint_handles,
    load_clip_handle,
    load_unet_handle,
    load_vae_handle,
)
from engine.handles.model import ModelHandle
from engine.handles.vae import VAEHandle, VAEMissingError, require_vae

__all__ = [
    "ClipHandle",
    "ManagedHandle",
    "ModelFileError",
    "ModelHandle",
    "VAEHandle",
    "VAEMissingError",
    "load_checkpoint_handles",
    "load_clip_handle",
    "load_unet_handle",
    "load_vae_handle",
    "require_vae",
]
