"""ComfyUI's hooks (HOOKS / HOOK_KEYFRAMES values): weight patches attached to a conditioning, applied only
while the model evaluates that conditioning, with a strength scheduled over the sampling run.

A `WeightHook` holds a LoRA state dict (CreateHookLora) or the weights of another checkpoint
(CreateHookModelAsLora: patch = its weight minus ours); both are resolved against a model's keys when
sampling uses them. A `HookGroup` is the HOOKS value: hooks unique by identity (`ref`, shared by a hook and
the copies SetHookKeyframes makes of it, as ComfyUI's hook_ref). `HookKeyframes` is HOOK_KEYFRAMES:
keyframes sorted by start_percent (stable, so equal starts keep their order).

During sampling the guided denoiser (engine.diffusion.sampling.guidance) calls `HookGroup.start_sampling`
once per run, then `HookSession.apply(group, sigma)` before each model call: the model's weights become
its clone's patches plus, for a hooked conditioning, each hook's patches at `strength_model` times the
hook's current keyframe strength. Keyframes advance as ComfyUI's HookKeyframeGroup does (see
`_KeyframeState.advance`); the per-run state lives in the session, the values themselves never change.

SetClipHooks makes a CLIP clone carrying a `ClipHooks`: its text encodings get the hooks' CLIP patches
(`strength_clip`) and, with apply_to_conds, the group under "hooks"; with schedule_clip one entry per
keyframe range (ComfyUI's clip_start_percent / clip_end_percent keys).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.diffusion.checkpoints.io import read_state_dict
from engine.diffusion.lora import load_lora, text_encoder_key_map, unet_key_map
from engine.memory.patcher import ModelPatcher
from engine.memory.weight_patches import WeightPatch

INTERPOLATIONS = ("linear", "ease_in", "ease_out", "ease_in_out")


@dataclass(frozen=True)
class HookKeyframe:
    strength: float
    start_percent: float = 0.0
    guarantee_steps: int = 1


@dataclass(frozen=True, eq=False)
class HookKeyframes:
    """HOOK_KEYFRAMES: keyframes in start_percent order. `eq=False`: the run state of a schedule is
    shared by the hooks that got this very object (SetHookKeyframes), as in ComfyUI."""

    keyframes: tuple[HookKeyframe, ...] = ()

    def add(self, keyframe: HookKeyframe) -> HookKeyframes:
        return HookKeyframes(tuple(sorted((*self.keyframes, keyframe), key=lambda k: k.start_percent)))


def interpolated(start: float, end: float, count: int, method: str) -> list[float]:
    """ComfyUI's InterpolationMethod.get_weights: `count` values from `start` to `end`."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {method!r}")
    if method == "linear":
        return [float(v) for v in torch.linspace(start, end, count)]
    t = torch.linspace(0, 1, count, dtype=torch.float64)
    shape = {"ease_in": t**2, "ease_out": 1 - (1 - t) ** 2, "ease_in_out": (1 - torch.cos(t * math.pi)) / 2}
    return [float(v) for v in (end - start) * shape[method] + start]


class _Ref:
    """Identity of a hook: shared by its keyframed copies."""


@dataclass(frozen=True, eq=False)
class WeightHook:
    """Weights to patch while a hooked conditioning is evaluated. `lora`: a LoRA file's tensors;
    `model_weights` / `clip_weights`: another checkpoint's module weights (model as LoRA)."""

    strength_model: float = 1.0
    strength_clip: float = 1.0
    lora: Mapping[str, torch.Tensor] | None = None
    model_weights: Mapping[str, torch.Tensor] | None = None
    clip_weights: Mapping[str, torch.Tensor] | None = None
    keyframes: HookKeyframes = field(default_factory=HookKeyframes)
    ref: _Ref = field(default_factory=_Ref)

    def with_keyframes(self, keyframes: HookKeyframes) -> WeightHook:
        return dataclasses.replace(self, keyframes=keyframes)

    def patches(self, module_keys: Iterable[str], *, clip: bool) -> dict[str, WeightPatch]:
        """This hook's patches for a module with these state-dict keys (the UNet, or the text encoder)."""
        keys = list(module_keys)
        if self.lora is not None:
            target = "clip" if clip else "unet"
            mapping = text_encoder_key_map(keys) if clip else unet_key_map(keys)
            return dict(load_lora(self.lora, {target: mapping}).patches.get(target, {}))
        weights = self.clip_weights if clip else self.model_weights
        known = set(keys)
        return {k: ModelAsLoraPatch(v) for k, v in (weights or {}).items() if k in known}


@dataclass(frozen=True)
class ModelAsLoraPatch:
    """ComfyUI's "model_as_lora": the other model's weight minus this one's."""

    target: torch.Tensor

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        if self.target.numel() != weight.numel():
            return torch.zeros_like(weight)  # another architecture's weight under the same name: unused
        return self.target.to(device=weight.device, dtype=torch.float32).reshape(weight.shape) - weight


@dataclass(frozen=True, eq=False)
class HookGroup:
    """HOOKS: weight hooks, unique by `ref` (the first one of a ref is kept, as ComfyUI's HookGroup.add)."""

    hooks: tuple[WeightHook, ...] = ()

    def __len__(self) -> int:
        return len(self.hooks)

    def combined(self, other: HookGroup | None) -> HookGroup:
        out = list(self.hooks)
        for hook in other.hooks if other is not None else ():
            if all(h.ref is not hook.ref for h in out):
                out.append(hook)
        return HookGroup(tuple(out))

    def with_keyframes(self, keyframes: HookKeyframes | None) -> HookGroup:
        """Every hook with this schedule (one object, so they advance together); None: no schedule."""
        kf = keyframes if keyframes is not None else HookKeyframes()
        return HookGroup(tuple(h.with_keyframes(kf) for h in self.hooks))

    @staticmethod
    def combine_all(groups: Iterable[HookGroup | None]) -> HookGroup | None:
        """CombineHooks: None when none is given, the group itself when one is, else their union."""
        given = [g for g in groups if g is not None]
        if not given:
            return None
        out = given[0]
        for g in given[1:]:
            out = out.combined(g)
        return out

    def start_sampling(self, base_model: Any) -> HookSession:
        """The per-run state the guided denoiser uses; `base_model` is the DiffusionModel's ComfyUI-shaped
        model, whose `current_patcher` is the MODEL handle being sampled."""
        handle = getattr(base_model, "current_patcher", None)
        if handle is None or not hasattr(handle, "patcher"):
            raise ValueError("hooked conditioning needs a diffgraph MODEL to apply its weight patches to")
        return HookSession(handle)


def with_hooks(conditioning: Any, hooks: HookGroup | None) -> list[list[Any]]:
    """ComfyUI's set_hooks_for_conditioning (append mode): each entry's own group combined with `hooks`."""
    out = []
    for cond, opts in conditioning:
        n = dict(opts)
        if hooks is not None:
            own = n.get("hooks")
            n["hooks"] = hooks if own is None else own.combined(hooks)
        out.append([cond, n])
    return out


class _KeyframeState:
    """ComfyUI's HookKeyframeGroup.prepare_current_keyframe, for one schedule in one run."""

    def __init__(self, keyframes: HookKeyframes, percent_to_sigma: Any) -> None:
        self.keyframes = keyframes.keyframes
        self.start_sigma = [float(percent_to_sigma(k.start_percent)) for k in self.keyframes]
        self.index = 0
        self.used_steps = 0
        self.last_sigma: float | None = None

    def _guarantee(self, i: int, max_sigma: float) -> int:
        # A keyframe that starts before the run's first sigma (an img2img pass) guarantees nothing.
        return 0 if self.start_sigma[i] > max_sigma else self.keyframes[i].guarantee_steps

    def advance(self, sigma: float, max_sigma: float) -> None:
        if not self.keyframes or sigma == self.last_sigma:
            return
        if self.used_steps >= self._guarantee(self.index, max_sigma):
            for i in range(self.index + 1, len(self.keyframes)):
                if self.start_sigma[i] < sigma:
                    break  # keyframes are in percent order: the later ones start later still
                self.index, self.used_steps = i, 0
                if self._guarantee(i, max_sigma) > 0:
                    break
        self.used_steps += 1
        self.last_sigma = sigma

    @property
    def strength(self) -> float:
        return self.keyframes[self.index].strength if self.keyframes else 1.0


class HookSession:
    """One sampling run's hook state over a MODEL handle (see the module docstring)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._states: dict[int, _KeyframeState] = {}
        self._patches: dict[int, dict[str, WeightPatch]] = {}
        self._patchers: dict[tuple[int, tuple[float, ...]], ModelPatcher] = {}
        self._keep: list[Any] = []  # the keyed objects stay alive for the run, so their ids stay unique
        self.max_sigma: float | None = None

    def strength(self, hook: WeightHook, sigma: float) -> float:
        state = self._states.get(id(hook.keyframes))
        if state is None:
            state = _KeyframeState(hook.keyframes, self.handle.model_sampling.percent_to_sigma)
            self._states[id(hook.keyframes)] = state
            self._keep.append(hook.keyframes)
        state.advance(sigma, self.max_sigma if self.max_sigma is not None else sigma)
        return state.strength

    def patcher_for(self, hooks: HookGroup | None, sigma: float) -> ModelPatcher:
        """The patch set to evaluate `hooks`' conditioning at `sigma` with (the clone's own without)."""
        base: ModelPatcher = self.handle.patcher
        if hooks is None or not hooks.hooks:
            return base
        strengths = tuple(h.strength_model * self.strength(h, sigma) for h in hooks.hooks)
        key = (id(hooks), strengths)
        patcher = self._patchers.get(key)
        if patcher is None:
            patcher = base.clone()
            for hook, strength in zip(hooks.hooks, strengths, strict=True):
                if strength != 0.0:
                    patcher.add_patches(self._hook_patches(hook), strength)
            self._patchers[key] = patcher
            self._keep.append(hooks)
        return patcher

    def _hook_patches(self, hook: WeightHook) -> dict[str, WeightPatch]:
        found = self._patches.get(id(hook.ref))
        if found is None:
            found = hook.patches(self.handle.patcher.patch_keys(), clip=False)
            self._patches[id(hook.ref)] = found
            self._keep.append(hook.ref)
        return found

    def apply(self, hooks: HookGroup | None, sigma: float, sample_sigmas: Any = None) -> None:
        """Write the patch set for `hooks` at `sigma` into the model (a no-op when it already is)."""
        if self.max_sigma is None:
            # The run's largest sigma: from the schedule when known, else the first step's.
            self.max_sigma = float(torch.max(sample_sigmas)) if sample_sigmas is not None else sigma
        self.handle.manager.load(self.patcher_for(hooks, sigma))


# ---- making hooks (CreateHookLora, CreateHookModelAsLora) --------------------------------------------


def lora_hook(path: Any, strength_model: float, strength_clip: float) -> HookGroup:
    """A group of one hook with a LoRA file's tensors (float32), matched to a model when it is used."""
    sd = read_state_dict(path, dtype=torch.float32)
    return HookGroup((WeightHook(strength_model, strength_clip, lora=sd),))


def model_as_lora_hook(
    path: Any, strength_model: float, strength_clip: float, *, manager: Any, embeddings_folder: Any = None
) -> HookGroup:
    """A group of one hook with a checkpoint's UNet and text-encoder weights: while it applies, a model
    of the same architecture moves towards that checkpoint by the strength (1 = its weights)."""
    from engine.handles.loading import load_checkpoint_handles

    model, clip, _ = load_checkpoint_handles(
        path, manager=manager, embeddings_folder=embeddings_folder, want_vae=False
    )

    def weights(handle: Any) -> dict[str, torch.Tensor]:
        # The loader's own tensors in RAM (patching never writes into them: patched weights replace them).
        return {k: v.detach().to("cpu") for k, v in handle.patcher.module.state_dict().items()}

    clip_weights = weights(clip) if clip is not None else None
    hook = WeightHook(strength_model, strength_clip, model_weights=weights(model), clip_weights=clip_weights)
    return HookGroup((hook,))


# ---- CLIP hooks (SetClipHooks) ----------------------------------------------------------------------


def clip_schedule(hooks: HookGroup) -> list[tuple[tuple[float, float], tuple[float, ...]]]:
    """ComfyUI's get_hooks_for_clip_schedule: percent ranges where every hook's keyframe strength is
    constant, with each hook's strength there (1 for hooks without keyframes)."""
    per_hook: list[list[tuple[tuple[float, float], float]]] = []
    for hook in hooks.hooks:
        kfs = hook.keyframes.keyframes
        if not kfs:
            per_hook.append([((0.0, 1.0), 1.0)])
            continue
        ranges = []
        prev = kfs[0]
        for kf in kfs:
            if kf.start_percent > prev.start_percent and not math.isclose(kf.strength, prev.strength):
                ranges.append(((prev.start_percent, kf.start_percent), prev.strength))
                prev = kf
            elif kf.start_percent == prev.start_percent:
                prev = kf
        if not math.isclose(prev.start_percent, 1.0):
            ranges.append(((prev.start_percent, 1.0), prev.strength))
        per_hook.append(ranges)
    bounds = sorted({0.0, *(b for ranges in per_hook for r, _ in ranges for b in r)})
    out = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        strengths = []
        for ranges in per_hook:
            # The first of the hook's ranges overlapping this one (None in ComfyUI: strength 1).
            hit = next((s for (a, b), s in ranges if a < hi and b > lo), 1.0)
            strengths.append(hit)
        out.append(((lo, hi), tuple(strengths)))
    return out


@dataclass(frozen=True)
class ClipHooks:
    """What SetClipHooks puts on a CLIP clone (ClipHandle.clip_hooks): see the module docstring."""

    hooks: HookGroup  # patched into the text encoder (without keyframes unless `schedule`)
    cond_hooks: HookGroup | None  # put on the conditionings (apply_to_conds), keyframes kept
    schedule: bool

    def _clone_at(self, clip: Any, strengths: tuple[float, ...]) -> Any:
        c = clip.clone()
        c.clip_hooks = None
        keys = c.patcher.patch_keys()
        for hook, strength in zip(self.hooks.hooks, strengths, strict=True):
            s = hook.strength_clip * strength
            if s != 0.0:
                c.add_patches(hook.patches(keys, clip=True), s)
        return c

    def encode_conditioning(
        self, clip: Any, text: str, *, warnings: list[str] | None = None, **extra: Any
    ) -> list[list[Any]]:
        hooked = {"hooks": self.cond_hooks} if self.cond_hooks is not None else {}
        if not self.schedule:
            plain = self._clone_at(clip, tuple(1.0 for _ in self.hooks.hooks))
            return plain.encode_conditioning(text, warnings=warnings, **extra, **hooked)
        out: list[list[Any]] = []
        for (lo, hi), strengths in clip_schedule(self.hooks):
            # ComfyUI skips ranges outside a start/end percent already given.
            if hi < extra.get("start_percent", 0.0) or lo > extra.get("end_percent", 1.0):
                continue
            keys = {"clip_start_percent": lo, "clip_end_percent": hi}
            part = self._clone_at(clip, strengths)
            out += part.encode_conditioning(text, warnings=warnings, **keys, **extra, **hooked)
        return out
