"""ComfyUI's patcher extensions (comfy.patcher_extension): wrappers, callbacks, attachments, injections
and additional models registered on a ModelPatcher, and the nested-dict helpers packs use with them.

Registration, lookup and cloning behave as in ComfyUI (so packs that set them up load and keep their
state per clone); diffgraph's sampling does not yet run the registered wrappers and callbacks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from engine.diffusion.models.wrappers import WrapperExecutor as WrapperExecutor


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_LOAD = "on_load_after"
    ON_DETACH = "on_detach_after"
    ON_CLEANUP = "on_cleanup"
    ON_PRE_RUN = "on_pre_run"
    ON_PREPARE_STATE = "on_prepare_state"
    ON_APPLY_HOOKS = "on_apply_hooks"
    ON_REGISTER_ALL_HOOK_PATCHES = "on_register_all_hook_patches"
    ON_INJECT_MODEL = "on_inject_model"
    ON_EJECT_MODEL = "on_eject_model"

    @classmethod
    def init_callbacks(cls) -> dict[str, dict[str, list[Callable[..., Any]]]]:
        return {}


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    PREDICT_NOISE = "predict_noise"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

    @classmethod
    def init_wrappers(cls) -> dict[str, dict[str, list[Callable[..., Any]]]]:
        return {}


def _options(options: dict[str, Any], is_model_options: bool, create: bool) -> dict[str, Any]:
    if not is_model_options:
        return options
    if create:
        return options.setdefault("transformer_options", {})  # type: ignore[no-any-return]
    return options.get("transformer_options", {})  # type: ignore[no-any-return]


def _add(table: str, kind: str, key: str | None, fn: Any, options: dict[str, Any], is_mo: bool) -> None:
    registry = _options(options, is_mo, True).setdefault(table, {})
    registry.setdefault(kind, {}).setdefault(key, []).append(fn)


def _with_key(table: str, kind: str, key: str | None, options: dict[str, Any], is_mo: bool) -> list[Any]:
    return list(_options(options, is_mo, False).get(table, {}).get(kind, {}).get(key, []))


def _all(table: str, kind: str, options: dict[str, Any], is_mo: bool) -> list[Any]:
    by_key = _options(options, is_mo, False).get(table, {}).get(kind, {})
    return [fn for fns in by_key.values() for fn in fns]


def add_callback(
    call_type: str, callback: Any, transformer_options: dict[str, Any], is_model_options: bool = False
) -> None:
    _add("callbacks", call_type, None, callback, transformer_options, is_model_options)


def add_callback_with_key(
    call_type: str,
    key: str,
    callback: Any,
    transformer_options: dict[str, Any],
    is_model_options: bool = False,
) -> None:
    _add("callbacks", call_type, key, callback, transformer_options, is_model_options)


def get_callbacks_with_key(
    call_type: str, key: str, transformer_options: dict[str, Any], is_model_options: bool = False
) -> list[Any]:
    return _with_key("callbacks", call_type, key, transformer_options, is_model_options)


def get_all_callbacks(
    call_type: str, transformer_options: dict[str, Any], is_model_options: bool = False
) -> list[Any]:
    return _all("callbacks", call_type, transformer_options, is_model_options)


def add_wrapper(
    wrapper_type: str, wrapper: Any, transformer_options: dict[str, Any], is_model_options: bool = False
) -> None:
    _add("wrappers", wrapper_type, None, wrapper, transformer_options, is_model_options)


def add_wrapper_with_key(
    wrapper_type: str,
    key: str,
    wrapper: Any,
    transformer_options: dict[str, Any],
    is_model_options: bool = False,
) -> None:
    _add("wrappers", wrapper_type, key, wrapper, transformer_options, is_model_options)


def get_wrappers_with_key(
    wrapper_type: str, key: str, transformer_options: dict[str, Any], is_model_options: bool = False
) -> list[Any]:
    return _with_key("wrappers", wrapper_type, key, transformer_options, is_model_options)


def get_all_wrappers(
    wrapper_type: str, transformer_options: dict[str, Any], is_model_options: bool = False
) -> list[Any]:
    return _all("wrappers", wrapper_type, transformer_options, is_model_options)


class PatcherInjection:
    def __init__(self, inject: Callable[..., Any], eject: Callable[..., Any]) -> None:
        self.inject = inject
        self.eject = eject


def copy_nested_dicts(input_dict: dict[Any, Any]) -> dict[Any, Any]:
    """Nested dicts copied, lists one level copied, other values shared (ComfyUI's semantics)."""
    out = dict(input_dict)
    for key, value in input_dict.items():
        if isinstance(value, dict):
            out[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            out[key] = list(value)
    return out


def merge_nested_dicts(
    dict1: dict[Any, Any], dict2: dict[Any, Any], copy_dict1: bool = True
) -> dict[Any, Any]:
    """``dict2`` merged into (a copy of) ``dict1``: dicts merged recursively, lists concatenated."""
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            merged[key] = merge_nested_dicts(value, merged.setdefault(key, {}))
        elif isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged


class ComfyPatcherExtensionsMixin:
    """ModelPatcher's wrapper / callback / attachment / injection / additional-model registries."""

    wrappers: dict[str, dict[str | None, list[Any]]]
    callbacks: dict[str, dict[str | None, list[Any]]]
    attachments: dict[str, Any]
    additional_models: dict[str, list[Any]]
    injections: dict[str, list[Any]]

    def _init_extensions(self) -> None:
        self.wrappers, self.callbacks = {}, {}
        self.attachments, self.additional_models, self.injections = {}, {}, {}

    def _clone_extensions(self, source: Any) -> None:
        self.wrappers = {k: {k1: list(v1) for k1, v1 in v.items()} for k, v in source.wrappers.items()}
        self.callbacks = {k: {k1: list(v1) for k1, v1 in v.items()} for k, v in source.callbacks.items()}
        self.attachments = {
            k: a.on_model_patcher_clone() if hasattr(a, "on_model_patcher_clone") else a
            for k, a in source.attachments.items()
        }
        self.additional_models = {k: [m.clone() for m in v] for k, v in source.additional_models.items()}
        self.injections = {k: list(v) for k, v in source.injections.items()}
        for callback in self.get_all_callbacks(CallbacksMP.ON_CLONE):
            callback(source, self)

    def add_callback(self, call_type: str, callback: Any) -> None:
        self.add_callback_with_key(call_type, None, callback)

    def add_callback_with_key(self, call_type: str, key: str | None, callback: Any) -> None:
        self.callbacks.setdefault(call_type, {}).setdefault(key, []).append(callback)

    def remove_callbacks_with_key(self, call_type: str, key: str) -> None:
        self.callbacks.get(call_type, {}).pop(key, None)

    def get_callbacks(self, call_type: str, key: str | None) -> list[Any]:
        return self.callbacks.get(call_type, {}).get(key, [])

    def get_all_callbacks(self, call_type: str) -> list[Any]:
        return [c for cs in self.callbacks.get(call_type, {}).values() for c in cs]

    def add_wrapper(self, wrapper_type: str, wrapper: Any) -> None:
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def add_wrapper_with_key(self, wrapper_type: str, key: str | None, wrapper: Any) -> None:
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key: str) -> None:
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key: str | None) -> list[Any]:
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    def get_all_wrappers(self, wrapper_type: str) -> list[Any]:
        return [w for ws in self.wrappers.get(wrapper_type, {}).values() for w in ws]

    def set_attachments(self, key: str, attachment: Any) -> None:
        self.attachments[key] = attachment

    def remove_attachments(self, key: str) -> None:
        self.attachments.pop(key, None)

    def get_attachment(self, key: str) -> Any:
        return self.attachments.get(key)

    def set_injections(self, key: str, injections: list[Any]) -> None:
        self.injections[key] = injections

    def remove_injections(self, key: str) -> None:
        self.injections.pop(key, None)

    def get_injections(self, key: str) -> list[Any] | None:
        return self.injections.get(key)

    def set_additional_models(self, key: str, models: list[Any]) -> None:
        self.additional_models[key] = models

    def remove_additional_models(self, key: str) -> None:
        self.additional_models.pop(key, None)

    def get_additional_models_with_key(self, key: str) -> list[Any]:
        return self.additional_models.get(key, [])

    def get_additional_models(self) -> list[Any]:
        return [m for ms in self.additional_models.values() for m in ms]


class ComfyPatcherLifecycleMixin:
    """ModelPatcher's load / patch lifecycle calls packs make. diffgraph's memory manager loads models and
    applies weight patches when a model is used; these keep ComfyUI's meaning where one exists (patching
    and unpatching the weights now) and are no-ops where the manager already does the work."""

    patcher: Any
    object_patches: dict[str, Any]
    weight_wrapper_patches: dict[str, Any]

    def patch_model(
        self,
        device_to: Any = None,
        lowvram_model_memory: int = 0,
        load_weights: bool = True,
        force_patch_weights: bool = False,
    ) -> Any:
        """Write this clone's weight patches into the shared weights now; returns ``self.model``."""
        if load_weights:
            self.patcher.apply()
        return self.model  # type: ignore[attr-defined]

    def unpatch_model(self, device_to: Any = None, unpatch_weights: bool = True) -> None:
        if unpatch_weights:
            self.patcher.remove()

    def use_ejected(
        self, skip_and_inject_on_exit_only: bool = False
    ) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext(self)

    def calculate_weight(
        self, patches: list[Any], weight: torch.Tensor, key: str, intermediate_dtype: Any = torch.float32
    ) -> torch.Tensor:
        """``weight`` with ComfyUI-style ``(strength_patch, patch, strength_model, ...)`` entries applied."""
        from engine.handles.comfy_surface.patcher import patched_weight

        return patched_weight([(weight, None), *patches]).to(weight.dtype)

    def set_model_compute_dtype(self, dtype: Any) -> None:
        self.object_patches["manual_cast_dtype"] = dtype

    def add_weight_wrapper(self, name: str, function: Any) -> None:
        self.weight_wrapper_patches[name] = self.weight_wrapper_patches.get(name, []) + [function]

    def lowvram_patch_counter(self) -> int:
        return 0

    def get_nested_additional_models(self) -> list[Any]:
        return list(self.get_additional_models())  # type: ignore[attr-defined]

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        """Steps of ComfyUI's own loading and hook machinery that diffgraph's manager has no use for."""

    pre_run = prepare_state = cleanup = detach = inject_model = eject_model = _nothing
    restore_hook_patches = clean_hooks = set_hook_mode = unpatch_hooks = _nothing
