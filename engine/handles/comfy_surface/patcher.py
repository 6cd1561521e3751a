"""ComfyUI's ``ModelPatcher`` surface on diffgraph's MODEL value (engine.handles.ModelHandle).

Custom packs program against ComfyUI's ModelPatcher (comfy/model_patcher.py): ``model_options`` with its
``"transformer_options"``, ``clone()``, the ``set_model_*`` patch setters, object patches, weight patches
with ``diffusion_model.``-prefixed keys, ``model.diffusion_model`` / ``model.model_sampling``... This mixin
gives ModelHandle that surface, with ComfyUI's option layout, so the UNet (engine.diffusion.models.unet)
and the guidance (engine.diffusion.sampling.guidance) find the patches where ComfyUI's do.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from engine.handles.comfy_surface.base_model import BaseModel, base_model_for
from engine.handles.comfy_surface.extension import merge_nested_dicts
from engine.memory.weight_patches import DiffPatch, LoRAPatch, WeightPatch, as_patch

if TYPE_CHECKING:
    from engine.diffusion.sampling.model_sampling import ModelSampling

log = logging.getLogger(__name__)

# ComfyUI's state-dict names of a MODEL's weights carry this prefix; the UNet's own names do not.
UNET_PREFIX = "diffusion_model."


def copy_nested(value: Any) -> Any:
    """Dicts and lists copied at every level, everything else shared."""
    if isinstance(value, dict):
        return {k: copy_nested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_nested(v) for v in value]
    return value


def copy_model_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A clone's options: a deep copy, as ComfyUI's ``clone()`` makes (so a pack that mutates a patch
    object it finds in a clone's options - IPAdapter adds to its attention patch - leaves the original's
    alone). Options holding something that cannot be deep-copied fall back to copying the dicts and
    lists and sharing the rest."""
    try:
        return copy.deepcopy(dict(options))
    except Exception as exc:  # noqa: BLE001 - any object in a pack's options may refuse deepcopy
        log.debug("model_options not deep-copyable (%s); copying the containers only", exc)
        return copy_nested(dict(options))


def set_model_options_patch_replace(
    model_options: dict[str, Any],
    patch: Any,
    name: str,
    block_name: str,
    number: int,
    transformer_index: int | None = None,
) -> dict[str, Any]:
    """Register ``patch`` under ``transformer_options["patches_replace"][name][key]``, copying each level
    (as ComfyUI does: a shallow copy of these options elsewhere keeps its own table)."""
    to = dict(model_options["transformer_options"])
    replace = dict(to.get("patches_replace", {}))
    table = dict(replace.get(name, {}))
    key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    table[key] = patch
    replace[name] = table
    to["patches_replace"] = replace
    model_options["transformer_options"] = to
    return model_options


def _append_cfg_hook(model_options: dict[str, Any], name: str, fn: Any, disable_cfg1: bool) -> dict[str, Any]:
    # A new list, not an append: a shallow copy of these options elsewhere must not see it.
    model_options[name] = list(model_options.get(name, [])) + [fn]
    if disable_cfg1:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def set_model_options_post_cfg_function(
    model_options: dict[str, Any], post_cfg_function: Any, disable_cfg1_optimization: bool = False
) -> dict[str, Any]:
    return _append_cfg_hook(
        model_options, "sampler_post_cfg_function", post_cfg_function, disable_cfg1_optimization
    )


def set_model_options_pre_cfg_function(
    model_options: dict[str, Any], pre_cfg_function: Any, disable_cfg1_optimization: bool = False
) -> dict[str, Any]:
    return _append_cfg_hook(
        model_options, "sampler_pre_cfg_function", pre_cfg_function, disable_cfg1_optimization
    )


def add_comfy_patches(
    patcher: Any,
    patches: Mapping[Any, Any],
    own_keys: Callable[[str], list[str]],
    strength_patch: float,
    strength_model: float,
) -> list[Any]:
    """Add ComfyUI-style weight patches to a diffgraph patcher: ``own_keys(name)`` lists the patcher's
    names that a ComfyUI key may stand for (the first one the module has is used). Returns the keys that
    matched, as given."""
    known = patcher.patch_keys()
    matched: list[Any] = []
    converted: dict[str, WeightPatch] = {}
    for key, value in patches.items():
        if not isinstance(key, str) and any(part is not None for part in key[1:]):
            raise ValueError(f"weight patch {key!r}: offsets and functions are not supported")
        name = key if isinstance(key, str) else key[0]
        own = next((k for k in own_keys(name) if k in known), None)
        if own is not None:
            converted[own] = comfy_weight_patch(value)
            matched.append(key)
    if converted:
        patcher.add_patches(converted, strength_patch, strength_model)
    return matched


class _SetPatch:
    """ComfyUI's "set" weight patch: the weight becomes ``value``."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return self.value.to(weight.device, torch.float32).reshape(weight.shape) - weight


def patched_weight(entries: list[Any]) -> torch.Tensor:
    """A ``get_key_patches`` list ``[(weight, convert), (strength_patch, patch, strength_model, ...)...]``
    evaluated to its weight (ComfyUI's nested patch value, as the model-merging nodes pass it)."""
    weight = entries[0][0].to(torch.float32, copy=True)
    for entry in entries[1:]:
        strength_patch, patch, strength_model = entry[0], entry[1], entry[2]
        if strength_model != 1.0:
            weight *= strength_model
        weight += strength_patch * comfy_weight_patch(patch).delta(weight).reshape(weight.shape)
    return weight


def comfy_weight_patch(value: Any) -> WeightPatch:
    """One of ComfyUI's weight-patch values as a diffgraph WeightPatch: a tensor or ``(tensor,)`` (a
    difference), ``("diff", (t,))``, ``("set", (t,))``, ``("lora", (up, down, alpha, mid, ...))``, a
    weight-adapter object with ``.name == "lora"`` and ``.weights``, a nested ``get_key_patches`` list,
    or a diffgraph patch."""
    if isinstance(value, list):
        return DiffPatch(patched_weight(value))
    if isinstance(value, tuple):
        if len(value) == 1:
            return as_patch(value[0])
        kind, data = value[0], value[1]
        if kind == "diff":
            return as_patch(data[0])
        if kind == "set":
            return _SetPatch(data[0])
        if kind == "lora":
            return _lora(data)
        raise ValueError(f"weight patch kind {kind!r} is not supported by diffgraph's model layer")
    if getattr(value, "name", None) == "lora" and hasattr(value, "weights"):
        return _lora(value.weights)
    return as_patch(value)


def _lora(data: tuple[Any, ...]) -> LoRAPatch:
    up, down, alpha = data[0], data[1], data[2]
    mid = data[3] if len(data) > 3 else None
    if len(data) > 4 and data[4] is not None:
        raise ValueError("DoRA LoRA patches (dora_scale) are not supported by diffgraph's model layer")
    return LoRAPatch(up, down, None if alpha is None else float(alpha), mid)


class ComfyModelPatcherMixin:
    """ComfyUI's ModelPatcher methods for ModelHandle (which supplies ``patcher``, ``manager``,
    ``model_options``, ``model_sampling``, ``unet``, ``family``, ``diffusion_model()``)."""

    patcher: Any
    manager: Any
    model_options: dict[str, Any]
    model_sampling: ModelSampling
    object_patches: dict[str, Any]
    _comfy_model: BaseModel | None
    diffusion_model: Callable[[], Any]

    if TYPE_CHECKING:  # provided by ModelHandle (declared for the type checker only)

        @property
        def unet(self) -> torch.nn.Module: ...

    # ComfyUI ModelPatcher attributes packs read (or set, in subclasses of ModelPatcher) that have no
    # counterpart here: diffgraph's memory manager applies weight patches and loads models.
    weight_inplace_update = False
    force_cast_weights = False
    parent: Any = None
    is_clip = False
    is_injected = False
    skip_injection = False
    current_hooks: Any = None
    forced_hooks: Any = None
    _size = 0

    def _init_comfy_state(self) -> None:
        self.object_patches = {}
        self._comfy_model = None
        # Shared by clones, as ComfyUI's (packs' ModelPatcher subclasses keep weight backups there).
        self.backup: dict[str, Any] = {}
        self.object_patches_backup: dict[str, Any] = {}
        self.weight_wrapper_patches: dict[str, Any] = {}
        self.hook_patches: dict[Any, Any] = {}

    # ---- identity -----------------------------------------------------------------------------
    @property
    def model(self) -> BaseModel:
        """ComfyUI's ``ModelPatcher.model``: the BaseModel with ``diffusion_model`` = this UNet."""
        if self._comfy_model is None:
            self._comfy_model = base_model_for(self)
        return self._comfy_model

    @property
    def load_device(self) -> torch.device:
        return torch.device(self.manager.compute_device)

    @property
    def offload_device(self) -> torch.device:
        return torch.device(self.patcher.patch_state.offload_device)

    @property
    def size(self) -> int:
        return self.model_size()

    @size.setter
    def size(self, value: int) -> None:
        # ComfyUI caches the size; 0 makes it recompute (packs' clones set that).
        self._size = int(value)

    def model_size(self) -> int:
        if self._size <= 0:
            self._size = sum(t.numel() * t.element_size() for t in self.unet.state_dict().values())
        return self._size

    def loaded_size(self) -> int:
        return self.model_size() if self.current_loaded_device() == self.load_device else 0

    def current_loaded_device(self) -> torch.device:
        for p in self.unet.parameters():
            return p.device
        return self.offload_device

    def model_dtype(self) -> torch.dtype:
        return self.model.get_dtype()

    def memory_required(self, input_shape: Any) -> float:
        return self.model.memory_required(input_shape)

    def is_clone(self, other: Any) -> bool:
        return getattr(other, "unet", None) is self.unet

    def clone_has_same_weights(self, clone: Any) -> bool:
        return self.is_clone(clone) and clone.patcher.patches_uuid == self.patcher.patches_uuid

    @property
    def patches(self) -> dict[str, list[Any]]:
        return self.patcher.patches

    @property
    def patches_uuid(self) -> str:
        return str(self.patcher.patches_uuid)

    def _clone_comfy_state(self, source: Any) -> None:
        """What ``clone()`` copies beyond the weight patches (see ModelHandle.clone)."""
        self.model_options = copy_model_options(source.model_options)
        self.object_patches = dict(source.object_patches)
        self._comfy_model = None
        self.parent = source

    # ---- sampler options (comfy.model_patcher's set_model_* functions) -------------------------------
    def set_model_sampler_cfg_function(
        self, sampler_cfg_function: Any, disable_cfg1_optimization: bool = False
    ) -> None:
        fn = sampler_cfg_function
        if len(inspect.signature(fn).parameters) == 3:
            # The old form fn(cond, uncond, cond_scale), as ComfyUI still accepts it.
            self.model_options["sampler_cfg_function"] = lambda args: fn(
                args["cond"], args["uncond"], args["cond_scale"]
            )
        else:
            self.model_options["sampler_cfg_function"] = fn
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(
        self, post_cfg_function: Any, disable_cfg1_optimization: bool = False
    ) -> None:
        set_model_options_post_cfg_function(self.model_options, post_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(
        self, pre_cfg_function: Any, disable_cfg1_optimization: bool = False
    ) -> None:
        set_model_options_pre_cfg_function(self.model_options, pre_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_calc_cond_batch_function(self, fn: Any) -> None:
        self.model_options["sampler_calc_cond_batch_function"] = fn

    def set_model_unet_function_wrapper(self, unet_wrapper_function: Any) -> None:
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_denoise_mask_function(self, denoise_mask_function: Any) -> None:
        self.model_options["denoise_mask_function"] = denoise_mask_function

    # ---- UNet patches --------------------------------------------------------------------------------
    def _transformer_options(self) -> dict[str, Any]:
        return self.model_options.setdefault("transformer_options", {})

    def set_model_patch(self, patch: Any, name: str) -> None:
        to = self._transformer_options()
        patches = to.setdefault("patches", {})
        patches[name] = list(patches.get(name, [])) + [patch]

    def set_model_patch_replace(
        self, patch: Any, name: str, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self._transformer_options()
        set_model_options_patch_replace(
            self.model_options, patch, name, block_name, number, transformer_index
        )

    def set_model_attn1_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(
        self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(
        self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch: Any) -> None:
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "output_block_patch")

    def set_model_emb_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "emb_patch")

    def set_model_forward_timestep_embed_patch(self, patch: Any) -> None:
        # Stored as ComfyUI stores it; diffgraph's UNet blocks hold no layer kinds such patches target.
        self.set_model_patch(patch, "forward_timestep_embed_patch")

    def model_patches_to(self, device: Any) -> None:
        """Move patch objects that can move (``.to``), as ComfyUI does before sampling."""
        to = self.model_options.get("transformer_options", {})
        for patch_list in to.get("patches", {}).values():
            for i, p in enumerate(patch_list):
                if hasattr(p, "to"):
                    patch_list[i] = p.to(device)
        for table in to.get("patches_replace", {}).values():
            for k, p in table.items():
                if hasattr(p, "to"):
                    table[k] = p.to(device)
        wrapper: Any = self.model_options.get("model_function_wrapper")
        if hasattr(wrapper, "to"):
            self.model_options["model_function_wrapper"] = wrapper.to(device)

    def model_patches_models(self) -> list[Any]:
        to = self.model_options.get("transformer_options", {})
        found = [*(p for lst in to.get("patches", {}).values() for p in lst)]
        found += [p for table in to.get("patches_replace", {}).values() for p in table.values()]
        found.append(self.model_options.get("model_function_wrapper"))
        return [m for p in found if hasattr(p, "models") for m in p.models()]

    def sampling_options(self) -> dict[str, Any]:
        """The options sampling reads: patch objects moved to the compute device first, and the wrappers
        and callbacks registered on this model merged into the transformer options (a copy), as
        ComfyUI's sampling prepares them."""
        if self.model_options.get("transformer_options") or "model_function_wrapper" in self.model_options:
            self.model_patches_to(self.load_device)
            self.model_patches_to(self.model_dtype())
        registered = {"wrappers": getattr(self, "wrappers", {}), "callbacks": getattr(self, "callbacks", {})}
        if not any(registered.values()):
            return self.model_options
        options = dict(self.model_options)
        to = dict(options.get("transformer_options", {}))
        for name, table in registered.items():
            to[name] = merge_nested_dicts(to.get(name, {}), table)
        options["transformer_options"] = to
        return options

    # ---- object patches -----------------------------------------------------------------------------
    def add_object_patch(self, name: str, obj: Any) -> None:
        self.object_patches[name] = obj
        if name == "model_sampling":
            from engine.handles.comfy_surface.model_sampling import as_engine_model_sampling

            self.model_sampling = as_engine_model_sampling(obj)

    def get_model_object(self, name: str) -> Any:
        if name in self.object_patches:
            return self.object_patches[name]
        if name == "model_sampling":
            return self.model_sampling
        target: Any = self.model
        for part in name.split("."):
            target = getattr(target, part)
        return target

    # ---- weight patches (ComfyUI's keys: "diffusion_model.<unet key>") ------------------------------
    def add_patches(
        self, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
    ) -> list[Any]:
        """ComfyUI's ``add_patches``: keys are ``model.state_dict()`` names (``diffusion_model.…``; the
        UNet's own names are accepted too) or ``(key, offset[, function])`` tuples, values ComfyUI's patch
        values (see ``comfy_weight_patch``). Returns the keys that matched, as given."""

        def own(name: str) -> list[str]:
            return [name[len(UNET_PREFIX) :] if name.startswith(UNET_PREFIX) else name]

        return add_comfy_patches(self.patcher, patches, own, strength_patch, strength_model)

    def model_state_dict(self, filter_prefix: str | None = None) -> dict[str, torch.Tensor]:
        sd = {UNET_PREFIX + k: v for k, v in self.unet.state_dict().items()}
        if filter_prefix is not None:
            sd = {k: v for k, v in sd.items() if k.startswith(filter_prefix)}
        return sd

    def get_key_patches(self, filter_prefix: str | None = None) -> dict[str, list[Any]]:
        """``{key: [(base weight, convert), (strength_patch, patch, strength_model, None, None)...]}``."""
        state = self.patcher.patch_state
        out: dict[str, list[Any]] = {}
        for key, weight in self.model_state_dict(filter_prefix).items():
            own = key[len(UNET_PREFIX) :]
            backup = state.backups.get(own)
            base = backup.original if backup is not None else weight

            def convert(a: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return a

            entries = [(sp, p, sm, None, None) for sp, p, sm in self.patcher.patches.get(own, [])]
            out[key] = [(base, convert), *entries]
        return out
