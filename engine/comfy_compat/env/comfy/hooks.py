"""ComfyUI's comfy.hooks for custom packs: the hook and keyframe data types packs build and combine
(HookGroup, HookKeyframe, HookKeyframeGroup, the enums).

Weight hooks (create_hook_lora, create_hook_model_as_lora) attached to conditionings
(set_hooks_for_conditioning, conditioning_set_values_with_hooks, set_conds_props...) become diffgraph's
own hooks (engine.handles.hooks), which its sampler applies. Hooks of the other types, and hook patches
registered directly on models or CLIPs (load_hook_lora_for_models), raise NotImplementedError, so a
workflow that uses them fails with a clear message instead of sampling without them."""

from __future__ import annotations

import enum
import uuid
import weakref
from typing import Any

import torch

from engine.handles import hooks as _engine


class EnumHookMode(enum.Enum):
    MinVram = "minvram"
    MaxSpeed = "maxspeed"


class EnumHookType(enum.Enum):
    Weight = "weight"
    ObjectPatch = "object_patch"
    AdditionalModels = "add_models"
    TransformerOptions = "transformer_options"
    Injections = "add_injections"


class EnumWeightTarget(enum.Enum):
    Model = "model"
    Clip = "clip"


class EnumHookScope(enum.Enum):
    AllConditioning = "all_conditioning"
    HookedOnly = "hooked_only"


class Hook:
    """One hook: its type, identity (clones share it) and keyframes."""

    def __init__(self, hook_type: EnumHookType = EnumHookType.Weight, hook_ref: Any = None, hook_id: str | None = None,
                 hook_keyframe: HookKeyframeGroup | None = None, hook_scope: EnumHookScope = EnumHookScope.AllConditioning) -> None:  # fmt: skip
        self.hook_type = hook_type
        self.hook_ref = hook_ref if hook_ref is not None else uuid.uuid4().hex
        self.hook_id = hook_id
        self.hook_keyframe = hook_keyframe if hook_keyframe is not None else HookKeyframeGroup()
        self.hook_scope = hook_scope
        self.custom_should_register = None
        self.auto_apply_to_nonpositive = False

    @property
    def strength(self) -> float:
        return self.hook_keyframe.strength

    def reset(self) -> None:
        self.hook_keyframe.reset()

    def clone(self) -> Hook:
        c = self.__class__.__new__(self.__class__)
        c.__dict__.update(self.__dict__)
        c.hook_keyframe = self.hook_keyframe.clone()
        return c

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Hook) and self.__class__ == other.__class__ and self.hook_ref == other.hook_ref
        )

    def __hash__(self) -> int:
        return hash(self.hook_ref)


class WeightHook(Hook):
    def __init__(self, strength_model: float = 1.0, strength_clip: float = 1.0) -> None:
        super().__init__(EnumHookType.Weight)
        self.weights: Any = None
        self.weights_clip: Any = None
        self.need_weight_init = True
        self._strength_model = strength_model
        self._strength_clip = strength_clip

    @property
    def strength_model(self) -> float:
        return self._strength_model * self.strength

    @property
    def strength_clip(self) -> float:
        return self._strength_clip * self.strength


class HookGroup:
    """A set of hooks (kept in the order added), queried by type."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self._hook_dict: dict[EnumHookType, list[Hook]] = {}

    def __len__(self) -> int:
        return len(self.hooks)

    def add(self, hook: Hook) -> None:
        if hook not in self.hooks:
            self.hooks.append(hook)
            self._hook_dict.setdefault(hook.hook_type, []).append(hook)

    def remove(self, hook: Hook) -> None:
        if hook in self.hooks:
            self.hooks.remove(hook)
            self._hook_dict[hook.hook_type].remove(hook)

    def get_type(self, hook_type: EnumHookType) -> list[Hook]:
        return self._hook_dict.get(hook_type, [])

    def contains(self, hook: Hook) -> bool:
        return hook in self.hooks

    def is_subset_of(self, other: HookGroup) -> bool:
        return set(self.hooks).issubset(set(other.hooks))

    def new_with_common_hooks(self, other: HookGroup) -> HookGroup:
        c = HookGroup()
        for hook in self.hooks:
            if other.contains(hook):
                c.add(hook.clone())
        return c

    def clone(self) -> HookGroup:
        c = HookGroup()
        for hook in self.hooks:
            c.add(hook.clone())
        return c

    def clone_and_combine(self, other: HookGroup | None) -> HookGroup:
        c = self.clone()
        for hook in other.hooks if other is not None else []:
            c.add(hook.clone())
        return c

    def set_keyframes_on_hooks(self, hook_kf: HookKeyframeGroup | None) -> None:
        keyframes = HookKeyframeGroup() if hook_kf is None else hook_kf.clone()
        for hook in self.hooks:
            hook.hook_keyframe = keyframes

    def reset(self) -> None:
        for hook in self.hooks:
            hook.reset()

    @staticmethod
    def combine_all_hooks(hooks_list: list[HookGroup | None], require_count: int = 0) -> HookGroup | None:
        actual = [group for group in hooks_list if group is not None]
        if len(actual) < require_count:
            raise Exception(f"Need at least {require_count} hooks to combine, but only had {len(actual)}.")
        if not actual:
            return None
        if len(actual) == 1:
            return actual[0]
        combined = actual[0].clone()
        for group in actual[1:]:
            combined = combined.clone_and_combine(group)
        return combined


class HookKeyframe:
    def __init__(self, strength: float, start_percent: float = 0.0, guarantee_steps: int = 1) -> None:
        self.strength = strength
        self.start_percent = float(start_percent)
        self.start_t = 999999999.9
        self.guarantee_steps = guarantee_steps

    def get_effective_guarantee_steps(self, max_sigma: Any) -> int:
        return 0 if self.start_t > max_sigma else self.guarantee_steps

    def clone(self) -> HookKeyframe:
        c = HookKeyframe(self.strength, self.start_percent, self.guarantee_steps)
        c.start_t = self.start_t
        return c


class HookKeyframeGroup:
    """Keyframes sorted by start_percent; the first is current until sampling moves on."""

    def __init__(self) -> None:
        self.keyframes: list[HookKeyframe] = []
        self._current_keyframe: HookKeyframe | None = None

    @property
    def strength(self) -> float:
        return self._current_keyframe.strength if self._current_keyframe is not None else 1.0

    def reset(self) -> None:
        self._current_keyframe = self.keyframes[0] if self.keyframes else None

    def add(self, keyframe: HookKeyframe) -> None:
        self.keyframes.append(keyframe)
        self.keyframes.sort(key=lambda k: k.start_percent)
        self.reset()

    def has_guarantee_steps(self) -> bool:
        return any(k.guarantee_steps > 0 for k in self.keyframes)

    def has_index(self, index: int) -> bool:
        return 0 <= index < len(self.keyframes)

    def is_empty(self) -> bool:
        return not self.keyframes

    def clone(self) -> HookKeyframeGroup:
        c = HookKeyframeGroup()
        c.keyframes = [k.clone() for k in self.keyframes]
        c.reset()
        return c


class InterpolationMethod:
    LINEAR = "linear"
    EASE_IN = "ease_in"
    EASE_OUT = "ease_out"
    EASE_IN_OUT = "ease_in_out"
    _LIST = [LINEAR, EASE_IN, EASE_OUT, EASE_IN_OUT]

    @classmethod
    def get_weights(
        cls, num_from: float, num_to: float, length: int, method: str, reverse: bool = False
    ) -> torch.Tensor:
        """`length` weights from num_from to num_to: linear, quadratic ease in/out, or cosine ease in-out."""
        index = torch.linspace(0, 1, length)
        diff = num_to - num_from
        if method == cls.LINEAR:
            weights = torch.linspace(num_from, num_to, length)
        elif method == cls.EASE_IN:
            weights = diff * index**2 + num_from
        elif method == cls.EASE_OUT:
            weights = diff * (1 - (1 - index) ** 2) + num_from
        elif method == cls.EASE_IN_OUT:
            weights = diff * ((1 - torch.cos(index * torch.pi)) / 2) + num_from
        else:
            raise ValueError(f"Unrecognized interpolation method '{method}'.")
        return weights.flip(dims=(0,)) if reverse else weights


def _unsupported(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"comfy.hooks.{name}: diffgraph's sampler does not apply this kind of hook")

    call.__name__ = name
    return call


for _name in ("load_hook_lora_for_models",):
    globals()[_name] = _unsupported(_name)


# ---- creating hooks (ComfyUI's create_hook_*) ------------------------------------------------------


def create_hook_lora(lora: dict[str, torch.Tensor], strength_model: float, strength_clip: float) -> HookGroup:
    """A group of one weight hook carrying a LoRA state dict (matched to a model's keys when sampled)."""
    group = HookGroup()
    hook = WeightHook(strength_model=strength_model, strength_clip=strength_clip)
    group.add(hook)
    hook.weights = lora
    return group


def create_hook_model_as_lora(weights_model: Any, weights_clip: Any, strength_model: float,
                              strength_clip: float) -> HookGroup:  # fmt: skip
    """A group of one weight hook moving a model towards another one's weights (ComfyUI's model_as_lora
    patches: ``{key: ("model_as_lora", (weight,))}``)."""
    group = HookGroup()
    hook = WeightHook(strength_model=strength_model, strength_clip=strength_clip)
    group.add(hook)
    hook.weights = (
        None if weights_model is None else {k: ("model_as_lora", (v,)) for k, v in weights_model.items()}
    )
    hook.weights_clip = (
        None if weights_clip is None else {k: ("model_as_lora", (v,)) for k, v in weights_clip.items()}
    )
    hook.need_weight_init = False
    return group


def get_patch_weights_from_model(model: Any, discard_model_sampling: bool = True) -> dict[str, Any] | None:
    if model is None:
        return None
    weights: dict[str, Any] = dict(model.model.state_dict())
    if discard_model_sampling:
        weights = {k: v for k, v in weights.items() if not k.startswith("model_sampling")}
    return weights


def create_transformer_options_from_hooks(model: Any, hooks: HookGroup | None,
                                          transformer_options: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    if hooks is None or getattr(model, "is_clip", False):
        return {}
    if isinstance(hooks, HookGroup) and hooks.get_type(EnumHookType.TransformerOptions):
        raise NotImplementedError(
            "comfy.hooks: transformer-options hooks are not applied by diffgraph's sampler"
        )
    return transformer_options if transformer_options is not None else {}


# ---- to diffgraph's hooks -------------------------------------------------------------------------

# One engine identity per ComfyUI hook_ref, so that copies of a hook (clone(), keyframed copies) stay one
# hook in diffgraph too: combining dedups them and sampling loads their patches once.
_REFS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def _ref(hook_ref: Any) -> Any:
    key = str(hook_ref)
    ref = _REFS.get(key)
    if ref is None:
        ref = _engine._Ref()
        _REFS[key] = ref
    return ref


def _model_as_lora(weights: dict[str, Any] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    # ComfyUI names UNet weights as BaseModel's state dict does ("diffusion_model.<unet key>").
    if weights is None:
        return None
    out = {}
    for key, patch in weights.items():
        tensor = patch[1][0] if isinstance(patch, tuple) else patch
        out[key[len(prefix) :] if key.startswith(prefix) else key] = tensor
    return out


def _engine_hook(hook: WeightHook, keyframes: dict[int, Any]) -> Any:
    kf_group = hook.hook_keyframe
    kfs = keyframes.get(id(kf_group))
    if kfs is None:  # hooks sharing one keyframe group keep sharing one schedule
        items = (
            _engine.HookKeyframe(k.strength, k.start_percent, k.guarantee_steps) for k in kf_group.keyframes
        )
        kfs = keyframes[id(kf_group)] = _engine.HookKeyframes(tuple(items))
    common = {"keyframes": kfs, "ref": _ref(hook.hook_ref)}
    if hook.need_weight_init:
        return _engine.WeightHook(hook._strength_model, hook._strength_clip, lora=hook.weights, **common)
    return _engine.WeightHook(
        hook._strength_model, hook._strength_clip, model_weights=_model_as_lora(hook.weights, "diffusion_model."),
        clip_weights=_model_as_lora(hook.weights_clip, ""), **common,
    )  # fmt: skip


def to_engine_hooks(hooks: Any) -> Any:
    """A pack's HookGroup as diffgraph's HOOKS value (diffgraph's own values pass through)."""
    if hooks is None or isinstance(hooks, _engine.HookGroup):
        return hooks
    other = [h for h in hooks.hooks if h.hook_type != EnumHookType.Weight]
    if other:
        kinds = sorted({h.hook_type.value for h in other})
        raise NotImplementedError(f"comfy.hooks: {kinds} hooks are not applied by diffgraph's sampler")
    keyframes: dict[int, Any] = {}
    return _engine.HookGroup(tuple(_engine_hook(h, keyframes) for h in hooks.get_type(EnumHookType.Weight)))


# ---- attaching hooks to conditionings ---------------------------------------------------------------


def conditioning_set_values_with_hooks(conditioning: Any, values: dict[str, Any] | None = None,
                                       append_hooks: bool = True, cache: dict[Any, Any] | None = None) -> list[Any]:  # fmt: skip
    """Each entry with `values` set; "hooks" (converted to diffgraph's) combined with the entry's own
    group when append_hooks, as ComfyUI does."""
    values = dict(values or {})
    if "hooks" in values:
        values["hooks"] = to_engine_hooks(values["hooks"])
    out = []
    for cond, opts in conditioning:
        n = dict(opts)
        for key, value in values.items():
            if key == "hooks" and append_hooks and n.get("hooks") is not None:
                if value is not None:
                    n["hooks"] = to_engine_hooks(n["hooks"]).combined(value)
            else:
                n[key] = value
        out.append([cond, n])
    return out


def set_hooks_for_conditioning(cond: Any, hooks: Any, append_hooks: bool = True, cache: Any = None) -> Any:
    if hooks is None:
        return cond
    return conditioning_set_values_with_hooks(cond, {"hooks": hooks}, append_hooks=append_hooks)


def set_timesteps_for_conditioning(cond: Any, timestep_range: tuple[float, float] | None) -> Any:
    if timestep_range is None:
        return cond
    values = {"start_percent": timestep_range[0], "end_percent": timestep_range[1]}
    return conditioning_set_values_with_hooks(cond, values)


def set_mask_for_conditioning(
    cond: Any, mask: torch.Tensor | None, set_cond_area: str, strength: float
) -> Any:
    if mask is None:
        return cond
    if mask.ndim < 3:
        mask = mask.unsqueeze(0)
    values = {"mask": mask, "set_area_to_bounds": set_cond_area != "default", "mask_strength": strength}
    return conditioning_set_values_with_hooks(cond, values)


def _props(c: Any, hooks: Any, append: bool, mask: Any, area: str, strength: float, steps: Any) -> Any:
    c = set_hooks_for_conditioning(c, hooks, append_hooks=append)
    c = set_mask_for_conditioning(c, mask, area, strength)
    return set_timesteps_for_conditioning(c, steps)


def set_conds_props(conds: list[Any], strength: float, set_cond_area: str, mask: Any = None, hooks: Any = None,
                    timesteps_range: Any = None, append_hooks: bool = True) -> list[Any]:  # fmt: skip
    return [_props(c, hooks, append_hooks, mask, set_cond_area, strength, timesteps_range) for c in conds]


def set_conds_props_and_combine(conds: list[Any], new_conds: list[Any], strength: float = 1.0,
                                set_cond_area: str = "default", mask: Any = None, hooks: Any = None,
                                timesteps_range: Any = None, append_hooks: bool = True) -> list[Any]:  # fmt: skip
    return [
        list(c) + _props(n, hooks, append_hooks, mask, set_cond_area, strength, timesteps_range)
        for c, n in zip(conds, new_conds, strict=False)
    ]


def set_default_conds_and_combine(conds: list[Any], new_conds: list[Any], hooks: Any = None,
                                  timesteps_range: Any = None, append_hooks: bool = True) -> list[Any]:  # fmt: skip
    out = []
    for c, n in zip(conds, new_conds, strict=False):
        n = set_hooks_for_conditioning(n, hooks, append_hooks=append_hooks)
        n = conditioning_set_values_with_hooks(n, {"default": True})
        out.append(list(c) + set_timesteps_for_conditioning(n, timesteps_range))
    return out
