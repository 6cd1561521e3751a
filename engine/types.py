"""Socket types and the value conventions that travel along links.

The names are ComfyUI's (DESIGN.md §1) so that workflows and plugins written for it connect here
unchanged. Values on the wire:

- IMAGE: float32 tensor (B, H, W, C) in 0..1
- MASK: float32 tensor (B, H, W) in 0..1
- LATENT: dict with "samples" (B, C, h, w) and optional "noise_mask", "batch_index"
- CONDITIONING: list of [tensor (B, tokens, dim), {"pooled_output": ..., ...}] pairs
"""

from __future__ import annotations

# Widget (primitive) types: values are typed into the node, or linked from another node.
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
COMBO = "COMBO"

WIDGET_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO})

# Model and data types: always links.
MODEL = "MODEL"
CLIP = "CLIP"
VAE = "VAE"
CONDITIONING = "CONDITIONING"
LATENT = "LATENT"
IMAGE = "IMAGE"
MASK = "MASK"
CONTROL_NET = "CONTROL_NET"
UPSCALE_MODEL = "UPSCALE_MODEL"
CLIP_VISION = "CLIP_VISION"
CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
STYLE_MODEL = "STYLE_MODEL"
GLIGEN = "GLIGEN"
PHOTOMAKER = "PHOTOMAKER"
SIGMAS = "SIGMAS"
SAMPLER = "SAMPLER"
NOISE = "NOISE"
GUIDER = "GUIDER"
# A function latent -> latent (LatentOperation* nodes; LatentApplyOperation applies it).
LATENT_OPERATION = "LATENT_OPERATION"
# A (start_percent, end_percent) pair (ConditioningTimestepsRange; the hooks conditioning nodes take it).
TIMESTEPS_RANGE = "TIMESTEPS_RANGE"
# ComfyUI's hook groups (scheduled LoRA / model patches per conditioning, engine.handles.hooks), their
# keyframe schedules, and a list of floats (CreateHookKeyframesFromFloats takes one).
HOOKS = "HOOKS"
HOOK_KEYFRAMES = "HOOK_KEYFRAMES"
FLOATS = "FLOATS"
# TrainLoraNode's outputs: the trained LoRA weights (kohya keys -> tensors) and {"loss": [per step]}.
LORA_MODEL = "LORA_MODEL"
LOSS_MAP = "LOSS_MAP"

# Matches any socket type (ComfyUI's "*").
ANY = "*"

# The largest width/height (pixels) a size widget accepts (ComfyUI's MAX_RESOLUTION).
MAX_RESOLUTION = 16384

# The socket types the built-in pack may use: registration rejects any other name on a built-in node,
# so a typo ("LATNET") fails at start-up. Plugins may declare new types (e.g. "BBOX").
BUILTIN_SOCKET_TYPES = frozenset(
    {
        MODEL,
        CLIP,
        VAE,
        CONDITIONING,
        LATENT,
        IMAGE,
        MASK,
        CONTROL_NET,
        UPSCALE_MODEL,
        CLIP_VISION,
        CLIP_VISION_OUTPUT,
        STYLE_MODEL,
        GLIGEN,
        PHOTOMAKER,
        SIGMAS,
        SAMPLER,
        NOISE,
        GUIDER,
        LATENT_OPERATION,
        TIMESTEPS_RANGE,
        HOOKS,
        HOOK_KEYFRAMES,
        FLOATS,
        LORA_MODEL,
        LOSS_MAP,
        ANY,
    }
    | WIDGET_TYPES
)


def is_valid_type_name(name: object) -> bool:
    """A socket type name is a non-empty upper-case-ish identifier, '*', or a comma-separated union.

    Plugins may invent their own types (e.g. "BBOX"), so we check the shape of the name, not a list.
    """
    if not isinstance(name, str) or not name.strip():
        return False
    return all(part.strip() and not any(ch.isspace() for ch in part.strip()) for part in name.split(","))


def parts(type_name: str) -> frozenset[str]:
    """The names in a type, e.g. {"IMAGE", "MASK"} for the union "IMAGE,MASK"."""
    return frozenset(part.strip() for part in type_name.split(","))


def types_compatible(output_type: str, input_type: str) -> bool:
    """Can an output of `output_type` feed an input of `input_type`?

    Same rule as ComfyUI: equal names, either side "*", or overlapping comma-separated unions
    (e.g. an input declared "IMAGE,MASK" accepts both).
    """
    if ANY in (output_type, input_type) or output_type == input_type:
        return True
    if "," not in output_type and "," not in input_type:
        return False
    return bool(parts(output_type) & parts(input_type))
