"""The public surface for node authors: built-in nodes and plugins import only `engine.api` (and its
submodules) and `engine.types`.

A node is declared once, as data plus a pure function::

    from engine import api

    @api.node(
        "ImageInvert",
        category="image",
        inputs=[api.Input("image", api.IMAGE)],
        outputs=[api.Output(api.IMAGE)],
    )
    def image_invert(image):
        return (1.0 - image,)

The decorator returns a `NodeDefinition`; a pack lists its definitions in a module-level `NODES` list.
Definitions are checked when registered (`NodeRegistry.register`), failing loudly with the node's name.
Optional hooks are explicit keyword arguments: `fingerprint` (has an external thing changed?),
`validate` (cross-input checks), `check_lazy` (which lazy inputs are needed now).

This module is torch-free, so the CLI and server start without the model stack. What touches tensors
lives in submodules a node imports when it needs them:

- `engine.api.models`: the values on MODEL / CLIP / VAE / CONTROL_NET / UPSCALE_MODEL sockets, their
  loaders, LoRA and ControlNet application;
- `engine.api.sampling`: what the sampler nodes call (SAMPLER / SIGMAS / NOISE / GUIDER values);
- `engine.api.images`: image files (reading, PNG writing with the workflow embedded, file naming).

A running node reaches the runtime through its `context` parameter (`ExecutionContext`): `models`
(the model manager), `folders`, `samplers` (the sampling library), `progress`, `check_interrupt`.
"""

from __future__ import annotations

from engine.declarations import (
    ALWAYS_CHANGED,
    HIDDEN_EXTRA_PNGINFO,
    HIDDEN_PROMPT,
    HIDDEN_UNIQUE_ID,
    SAMPLER_CHOICES,
    SCHEDULER_CHOICES,
    Boolean,
    Combo,
    FileChoices,
    Float,
    Input,
    Int,
    NodeDefinition,
    NodeOutput,
    Output,
    RuntimeChoices,
    String,
    node,
)
from engine.execution.context import ExecutionContext
from engine.extensions import register_sampler, register_scheduler
from engine.types import (
    ANY,
    BOOLEAN,
    CLIP,
    CLIP_VISION,
    CLIP_VISION_OUTPUT,
    COMBO,
    CONDITIONING,
    CONTROL_NET,
    FLOAT,
    FLOATS,
    GLIGEN,
    GUIDER,
    HOOK_KEYFRAMES,
    HOOKS,
    IMAGE,
    INT,
    LATENT,
    LATENT_OPERATION,
    LORA_MODEL,
    LOSS_MAP,
    MASK,
    MAX_RESOLUTION,
    MODEL,
    NOISE,
    PHOTOMAKER,
    SAMPLER,
    SIGMAS,
    STRING,
    STYLE_MODEL,
    TIMESTEPS_RANGE,
    UPSCALE_MODEL,
    VAE,
)

__all__ = [
    "ALWAYS_CHANGED",
    "ANY",
    "BOOLEAN",
    "CLIP",
    "CLIP_VISION",
    "CLIP_VISION_OUTPUT",
    "COMBO",
    "CONDITIONING",
    "CONTROL_NET",
    "FLOAT",
    "GLIGEN",
    "PHOTOMAKER",
    "GUIDER",
    "HIDDEN_EXTRA_PNGINFO",
    "HOOKS",
    "HOOK_KEYFRAMES",
    "FLOATS",
    "HIDDEN_PROMPT",
    "HIDDEN_UNIQUE_ID",
    "IMAGE",
    "INT",
    "LATENT",
    "LATENT_OPERATION",
    "LORA_MODEL",
    "LOSS_MAP",
    "MASK",
    "MAX_RESOLUTION",
    "MODEL",
    "NOISE",
    "SAMPLER",
    "SAMPLER_CHOICES",
    "SCHEDULER_CHOICES",
    "SIGMAS",
    "STRING",
    "STYLE_MODEL",
    "TIMESTEPS_RANGE",
    "UPSCALE_MODEL",
    "VAE",
    "Boolean",
    "Combo",
    "ExecutionContext",
    "FileChoices",
    "Float",
    "Input",
    "Int",
    "NodeDefinition",
    "NodeOutput",
    "Output",
    "RuntimeChoices",
    "String",
    "node",
    "register_sampler",
    "register_scheduler",
]
