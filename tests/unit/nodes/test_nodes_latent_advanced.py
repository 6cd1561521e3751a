"""latent/advanced and latent/batch nodes: arithmetic, interpolation, concat/cut, seed behaviour,
rebatching, .latent files and latent operations, against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.folders import Folders
from tests.unit.nodes.node_support import builtin, node_context

LA = builtin("latent_advanced")


def lat(samples: torch.Tensor, **extra) -> dict:
    return {"samples": samples, **extra}


def test_add_subtract_multiply_broadcast_the_second_batch_and_keep_keys():
    a = lat(torch.arange(16.0).reshape(2, 2, 2, 2), batch_index=[4, 5])
    b = lat(torch.ones(1, 2, 2, 2))
    (added,) = LA.latent_add(a, b)
    (subtracted,) = LA.latent_subtract(a, b)
    torch.testing.assert_close(added["samples"], a["samples"] + 1)
    torch.testing.assert_close(subtracted["samples"], a["samples"] - 1)
    assert added["batch_index"] == [4, 5]
    (scaled,) = LA.latent_multiply(a, -0.5)
    torch.testing.assert_close(scaled["samples"], a["samples"] * -0.5)
    assert torch.equal(a["samples"], torch.arange(16.0).reshape(2, 2, 2, 2))  # input untouched


def test_add_resizes_a_different_sized_second_latent():
    a = lat(torch.zeros(1, 1, 2, 4))
    b = lat(torch.full((1, 1, 4, 8), 3.0))  # same aspect: a plain bilinear halving of a constant
    (out,) = LA.latent_add(a, b)
    torch.testing.assert_close(out["samples"], torch.full((1, 1, 2, 4), 3.0))


def test_interpolate_mixes_direction_and_length_separately():
    s1 = torch.zeros(1, 4, 1, 2)
    s2 = torch.zeros(1, 4, 1, 2)
    s1[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # length 5, direction (0.6, 0.8, 0, 0)
    s2[0, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 2.0])  # length 2, direction (0, 0, 0, 1)
    s2[0, :, 0, 1] = torch.tensor([0.0, 2.0, 0.0, 0.0])  # s1 is zero here: direction 0, not NaN
    (out,) = LA.latent_interpolate(lat(s1), lat(s2), 0.25)
    mix = torch.tensor([0.25 * 0.6, 0.25 * 0.8, 0.0, 0.75])
    expected = mix / math.sqrt(0.15**2 + 0.2**2 + 0.75**2) * (0.25 * 5 + 0.75 * 2)
    torch.testing.assert_close(out["samples"][0, :, 0, 0], expected)
    # Pixel 2: direction of 0.75 * (0, 1, 0, 0), length 0.25 * 0 + 0.75 * 2.
    torch.testing.assert_close(out["samples"][0, :, 0, 1], torch.tensor([0.0, 1.5, 0.0, 0.0]))
    (same,) = LA.latent_interpolate(lat(s1), lat(s2), 1.0)
    torch.testing.assert_close(same["samples"][0, :, 0, 0], s1[0, :, 0, 0])


def test_interpolate_normalises_each_batch_entry_on_its_own():
    s1 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    s2 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    (out,) = LA.latent_interpolate(lat(s1), lat(s2), 0.3)
    for i in range(3):
        (single,) = LA.latent_interpolate(lat(s1[i : i + 1]), lat(s2[i : i + 1]), 0.3)
        torch.testing.assert_close(out["samples"][i : i + 1], single["samples"])


def test_concat_directions():
    a = lat(torch.zeros(2, 1, 2, 3))
    b = lat(torch.ones(1, 1, 2, 3))
    (right,) = LA.latent_concat(a, b, "x")
    assert right["samples"].shape == (2, 1, 2, 6)
    assert right["samples"][:, :, :, :3].sum() == 0 and right["samples"][:, :, :, 3:].min() == 1
    (left,) = LA.latent_concat(a, b, "-x")
    assert left["samples"][:, :, :, :3].min() == 1 and left["samples"][:, :, :, 3:].sum() == 0
    (down,) = LA.latent_concat(a, b, "y")
    assert down["samples"].shape == (2, 1, 4, 3) and down["samples"][:, :, 2:].min() == 1
    (time,) = LA.latent_concat(a, b, "-t")  # axis -3: channels of an image latent
    assert time["samples"].shape == (2, 2, 2, 3) and time["samples"][:, 0].min() == 1


@pytest.mark.parametrize(
    ("index", "amount", "columns"),
    [(1, 2, [1, 2]), (4, 5, [4, 5]), (10, 3, [5]), (-2, 5, [4, 5]), (-9, 2, [0, 1]), (-3, 1, [3])],
)
def test_cut_clamps_index_and_amount(index, amount, columns):
    samples = torch.arange(6.0).reshape(1, 1, 1, 6).repeat(1, 1, 2, 1)
    (out,) = LA.latent_cut(lat(samples), "x", index, amount)
    assert out["samples"][0, 0, 0].tolist() == columns


def test_cut_along_y():
    samples = torch.arange(4.0).reshape(1, 1, 4, 1)
    (out,) = LA.latent_cut(lat(samples), "y", 1, 2)
    assert out["samples"].flatten().tolist() == [1.0, 2.0]


def test_batch_seed_behavior():
    source = lat(torch.zeros(3, 4, 2, 2), batch_index=[7, 8, 9])
    (fixed,) = LA.latent_batch_seed_behavior(source, "fixed")
    assert fixed["batch_index"] == [7, 7, 7]
    (fixed_plain,) = LA.latent_batch_seed_behavior(lat(torch.zeros(2, 4, 2, 2)), "fixed")
    assert fixed_plain["batch_index"] == [0, 0]
    (randomised,) = LA.latent_batch_seed_behavior(source, "random")
    assert "batch_index" not in randomised and source["batch_index"] == [7, 8, 9]


def test_rebatch_latents_joins_same_sized_runs_and_cuts_them():
    first = lat(torch.full((3, 4, 2, 2), 1.0))
    masked = torch.zeros(2, 1, 16, 16)
    second = lat(torch.full((2, 4, 2, 2), 2.0), noise_mask=masked)
    third = lat(torch.full((1, 4, 4, 4), 3.0))  # another size: starts a new run
    (out,) = LA.rebatch_latents([first, second, third], [2])
    assert [o["samples"].shape[0] for o in out] == [2, 2, 1, 1]
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 3], [4], [5]]
    assert out[1]["samples"][:, 0, 0, 0].tolist() == [1.0, 2.0]
    # Only batches holding part of a real mask keep one; the first entry's implicit mask is all ones.
    assert "noise_mask" not in out[0] and "noise_mask" not in out[3]
    assert out[1]["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.0] and out[2]["noise_mask"].sum() == 0
    assert out[3]["samples"].shape == (1, 4, 4, 4)


def test_rebatch_images():
    images = [torch.full((3, 2, 2, 3), 0.1), torch.full((2, 2, 2, 3), 0.2)]
    (out,) = LA.rebatch_images(images, [2])
    assert [o.shape[0] for o in out] == [2, 2, 1]
    assert out[1][:, 0, 0, 0].tolist() == pytest.approx([0.1, 0.2])


@pytest.fixture
def folders(tmp_path):
    folders = Folders.create(tmp_path)
    folders.create_directories()
    return folders


def test_save_latent_writes_comfy_format_and_load_latent_reads_it(folders):
    context, _ = node_context(folders=folders)
    samples = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(3))
    prompt = {"1": {"class_type": "SaveLatent", "inputs": {}}}
    out = LA.save_latent(
        lat(samples), "latents/test", context, prompt=prompt, extra_pnginfo={"workflow": {"v": 1}}
    )
    (entry,) = out.ui["latents"]
    assert entry == {"filename": "test_00001_.latent", "subfolder": "latents", "type": "output"}
    path = folders.output / "latents" / "test_00001_.latent"
    with safe_open(str(path), "pt") as handle:
        assert set(handle.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert handle.get_tensor("latent_format_version_0").numel() == 0
        metadata = handle.metadata()
    assert json.loads(metadata["prompt"]) == prompt and json.loads(metadata["workflow"]) == {"v": 1}
    second = LA.save_latent(lat(samples), "latents/test", context)
    assert second.ui["latents"][0]["filename"] == "test_00002_.latent"

    with safe_open(str(path), "pt") as handle:  # the LATENT's raw VAE latents, stored as they are
        assert torch.equal(handle.get_tensor("latent_tensor"), samples)
    (folders.input / "mine.latent").write_bytes(path.read_bytes())
    (loaded,) = LA.load_latent("mine.latent", context)
    assert torch.equal(loaded["samples"], samples)
    assert LA.load_latent.fingerprint("mine.latent", context) == LA.load_latent.fingerprint(
        "mine.latent", context
    )


def test_load_latent_reads_both_comfy_formats_as_raw_latents(folders):
    """A current file holds raw latents (the LATENT space: loaded unchanged); an older one (no version
    key) holds raw · 0.18215 and is divided by it, as ComfyUI's LoadLatent does."""
    context, _ = node_context(folders=folders)
    raw = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    save_file(
        {"latent_tensor": raw, "latent_format_version_0": torch.tensor([])}, str(folders.input / "new.latent")
    )
    save_file({"latent_tensor": raw * 0.18215}, str(folders.input / "old.latent"))
    (new,) = LA.load_latent("new.latent", context)
    (old,) = LA.load_latent("old.latent", context)
    assert torch.equal(new["samples"], raw)
    torch.testing.assert_close(old["samples"], raw)


def test_tonemap_reinhard_by_hand():
    latent = torch.tensor([[[[-1.0, 3.0]]]])  # one channel: lengths 1 and 3
    (operation,) = LA.latent_operation_tonemap_reinhard(1.0)
    (out,) = LA.latent_apply_operation(lat(latent), operation)
    top = 5 * math.sqrt(2.0) + 2.0  # mean 2, unbiased std sqrt(2)
    expected = torch.tensor([[[[-1.0 / (1.0 + 1.0 / top), 3.0 / (1.0 + 3.0 / top)]]]])
    torch.testing.assert_close(out["samples"], expected)


def test_sharpen_by_hand():
    latent = torch.ones(1, 1, 5, 5)
    latent[0, 0, 2, 2] = -1.0  # directions: +1 everywhere, -1 in the centre
    (operation,) = LA.latent_operation_sharpen(1, 1.0, 0.1)
    (out,) = LA.latent_apply_operation(lat(latent), operation)
    # 3x3 Gaussian on the grid {-1, 0, 1}² with sigma 1: centre weight 1 / (1 + 4 e^-1/2 + 4 e^-1).
    g_centre = 1.0 / (1.0 + 4 * math.exp(-0.5) + 4 * math.exp(-1.0))
    k_centre = 1.0 + 10 * 0.1 * (1.0 - g_centre)  # -10·alpha·g, plus what makes the kernel sum to 1
    assert out["samples"][0, 0, 2, 2].item() == pytest.approx((1 - 2 * k_centre) * (1 + 1e-6), rel=1e-5)
    # A constant direction field is left alone (the kernel sums to 1; borders reflect).
    (flat,) = LA.latent_apply_operation(lat(torch.full((1, 3, 4, 4), 2.0)), operation)
    torch.testing.assert_close(flat["samples"], torch.full((1, 3, 4, 4), 2.0), atol=1e-5, rtol=1e-5)
    (none,) = LA.latent_operation_sharpen(2, 1.0, 0.0)
    torch.testing.assert_close(none(latent=latent), latent, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real MODEL and two conditionings from a tiny random SD1 checkpoint."""
    from engine.handles import load_checkpoint_handles
    from engine.memory.devices import MemoryOptions, select_device
    from engine.memory.manager import ModelManager
    from tests.factories.checkpoints import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "sd1.safetensors", "sd1", seed=3)
    model, clip, _ = load_checkpoint_handles(path, manager=ModelManager(select_device(MemoryOptions())))
    encode = builtin("conditioning").clip_text_encode
    return model, encode(text="a red house", clip=clip)[0], encode(text="", clip=clip)[0]


def sample(model, positive, negative) -> torch.Tensor:
    context, _ = node_context()
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    args = dict(seed=3, steps=2, cfg=6.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    ksampler = builtin("sampling").ksampler
    return ksampler(
        model=model, positive=positive, negative=negative, latent_image=latent, context=context, **args
    )[0]["samples"]


@pytest.mark.slow
def test_apply_operation_cfg_acts_on_the_guidance_direction(tiny):
    model, positive, negative = tiny
    plain = sample(model, positive, negative)
    (identity,) = LA.latent_apply_operation_cfg(model, lambda latent, **_: latent)
    torch.testing.assert_close(sample(identity, positive, negative), plain)
    # Zeroing cond - uncond leaves the unconditional prediction: as if both prompts were the negative.
    (flatten,) = LA.latent_apply_operation_cfg(model, lambda latent, **_: latent * 0)
    torch.testing.assert_close(sample(flatten, positive, negative), sample(model, negative, negative))
    assert not torch.allclose(plain, sample(model, negative, negative))
    assert "sampler_pre_cfg_function" not in model.model_options  # the input MODEL is untouched
