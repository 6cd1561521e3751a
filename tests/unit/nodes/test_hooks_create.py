"""The HOOKS / HOOK_KEYFRAMES making nodes without a model: keyframe lists against hand-computed values,
combining, and that no node changes its inputs (cached outputs stay valid)."""

from __future__ import annotations

import math

import pytest

from engine.handles.hooks import HookGroup, WeightHook, clip_schedule
from tests.unit.nodes.node_support import builtin

HC, HK = builtin("hooks_create"), builtin("hooks")


def kf_list(kf):
    return [(round(k.strength, 6), round(k.start_percent, 6), k.guarantee_steps) for k in kf.keyframes]


def test_create_hook_keyframe_keeps_them_sorted_and_leaves_the_previous_alone():
    (a,) = HC.create_hook_keyframe(strength_mult=0.5, start_percent=0.6)
    (b,) = HC.create_hook_keyframe(strength_mult=2.0, start_percent=0.2, prev_hook_kf=a)
    (c,) = HC.create_hook_keyframe(strength_mult=3.0, start_percent=0.6, prev_hook_kf=b)
    assert kf_list(a) == [(0.5, 0.6, 1)]
    # Sorted by start; equal starts keep their order of addition.
    assert kf_list(c) == [(2.0, 0.2, 1), (0.5, 0.6, 1), (3.0, 0.6, 1)]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("linear", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("ease_in", [0.0, 0.0625, 0.25, 0.5625, 1.0]),  # t^2
        ("ease_out", [0.0, 0.4375, 0.75, 0.9375, 1.0]),  # 1 - (1 - t)^2
        ("ease_in_out", [0.0, (1 - math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(math.pi / 4)) / 2, 1.0]),
    ],
)
def test_interpolated_keyframes(method, expected):
    (kf,) = HC.create_hook_keyframes_interpolated(
        strength_start=1.0, strength_end=3.0, interpolation=method, start_percent=0.2, end_percent=0.6,
        keyframes_count=5, print_keyframes=False,
    )  # fmt: skip
    got = kf_list(kf)
    assert [s for s, _, _ in got] == pytest.approx([1.0 + 2.0 * e for e in expected], abs=1e-6)
    assert [p for _, p, _ in got] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6], abs=1e-6)
    assert [g for _, _, g in got] == [1, 0, 0, 0, 0]  # only the first guarantees a step


def test_keyframes_from_floats():
    (kf,) = HC.create_hook_keyframes_from_floats(
        floats_strength=[0.0, 1.0, 0.5], start_percent=0.0, end_percent=0.5
    )
    assert kf_list(kf) == [(0.0, 0.0, 1), (1.0, 0.25, 0), (0.5, 0.5, 0)]
    (one,) = HC.create_hook_keyframes_from_floats(floats_strength=0.7, start_percent=0.3, end_percent=0.9)
    assert kf_list(one) == [(0.7, 0.3, 1)]
    with pytest.raises(TypeError, match="floats_strength"):
        HC.create_hook_keyframes_from_floats(floats_strength="x", start_percent=0.0, end_percent=1.0)


def test_combine_hooks_is_a_union_by_identity():
    a, b = HookGroup((WeightHook(),)), HookGroup((WeightHook(),))
    (kf,) = HC.create_hook_keyframe(strength_mult=0.0, start_percent=0.5)
    (a_kf,) = HC.set_hook_keyframes(hooks=a, hook_kf=kf)
    assert a_kf.hooks[0].keyframes is kf and a.hooks[0].keyframes is not kf  # the input is unchanged
    assert HC.set_hook_keyframes(hooks=a) == (a,)
    (ab,) = HC.combine_hooks_4(hooks_A=a, hooks_C=b)
    assert ab.hooks == a.hooks + b.hooks
    # A keyframed copy is the same hook: combining keeps the first one.
    (same,) = HC.combine_hooks_2(hooks_A=a_kf, hooks_B=a)
    assert same.hooks == a_kf.hooks
    assert HC.combine_hooks_8() == (None,)
    assert HC.combine_hooks_2(hooks_B=b) == (b,)


def test_hooks_on_conditioning_are_combined_with_the_entry_own():
    a, b = HookGroup((WeightHook(),)), HookGroup((WeightHook(),))
    cond = [[None, {"x": 1}]]
    (first,) = HK.conditioning_set_properties(cond_NEW=cond, strength=1.0, set_cond_area="default", hooks=a)
    (both,) = HK.conditioning_set_properties(cond_NEW=first, strength=1.0, set_cond_area="default", hooks=b)
    assert first[0][1]["hooks"] is a and "hooks" not in cond[0][1]
    assert both[0][1]["hooks"].hooks == a.hooks + b.hooks and both[0][1]["x"] == 1
    with pytest.raises(TypeError, match="HOOKS"):
        HK.conditioning_set_properties(cond_NEW=cond, strength=1.0, set_cond_area="default", hooks="lora")


def test_clip_schedule_ranges():
    (kf,) = HC.create_hook_keyframe(strength_mult=0.0, start_percent=0.0)
    (kf,) = HC.create_hook_keyframe(strength_mult=0.0, start_percent=0.2, prev_hook_kf=kf)  # same strength
    (kf,) = HC.create_hook_keyframe(strength_mult=1.0, start_percent=0.5, prev_hook_kf=kf)
    scheduled = HookGroup((WeightHook(),)).with_keyframes(kf)
    plain = HookGroup((WeightHook(),))
    assert clip_schedule(scheduled.combined(plain)) == [((0.0, 0.5), (0.0, 1.0)), ((0.5, 1.0), (1.0, 1.0))]
