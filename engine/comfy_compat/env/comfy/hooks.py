"""ComfyUI's comfy.hooks for custom packs: the hook and keyframe data types packs build and combine
(HookGroup, HookKeyframe, HookKeyframeGroup, the enums).

diffgraph's sampler does not apply hooks (per-conditioning weight or option changes during sampling):
the functions that attach hooks to conditionings or models raise NotImplementedError, so a workflow that
uses them fails with a clear message instead of sampling without them."""

from __future__ import annotations

import enum
import uuid
from typing import Any

import torch


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
        raise NotImplementedError(f"comfy.hooks.{name}: diffgraph's sampler does not apply hooks")

    call.__name__ = name
    return call


for _name in (
    "create_hook_lora", "create_hook_model_as_lora", "load_hook_lora_for_models", "set_hooks_for_conditioning",
    "conditioning_set_values_with_hooks", "set_conds_props", "set_conds_props_and_combine",
    "set_default_conds_and_combine", "create_transformer_options_from_hooks", "get_patch_weights_from_model",
):  # fmt: skip
    globals()[_name] = _unsupported(_name)
