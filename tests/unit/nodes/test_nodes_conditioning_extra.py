"""nodes/conditioning_extra.py and nodes/hooks.py: the conditioning keys and values each node writes (as
ComfyUI writes them), the latents it encodes, the ControlNet values it makes, and the nodes that cannot run
yet failing with an error that names what is missing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from engine.api.models import ControlNetHandle
from engine.diffusion.models.controlnet import ControlNetModel
from engine.folders import Folders
from engine.graph.api_format import parse_api_workflow
from engine.handles import load_checkpoint_handles
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from engine.runtime import build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

C, CN, X, H, S = (
    builtin(n) for n in ("conditioning", "controlnet", "conditioning_extra", "hooks", "sampling")
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    manager = ModelManager(select_device(MemoryOptions()))
    folder = tmp_path_factory.mktemp("cond_extra")
    model, clip, vae = load_checkpoint_handles(
        write_tiny_checkpoint(folder / "sd1.safetensors", "sd1", seed=3), manager=manager
    )
    _, xl_clip, _ = load_checkpoint_handles(
        write_tiny_checkpoint(folder / "sdxl.safetensors", "sdxl", seed=4, with_vae=False), manager=manager
    )
    cnet = ControlNetHandle(ControlNetModel(model.unet.config), "c.safetensors")
    return model, clip, vae, xl_clip, cnet


def cond(*values: float, **opts: Any) -> list[list[Any]]:
    """A CONDITIONING with one (1, 2, 4) entry per value, each entry's options `opts`."""
    return [[torch.full((1, 2, 4), v), dict(opts)] for v in values]


# ---- conditioning_extra ----------------------------------------------------------------------------


def test_clip_text_encode_controlnet_sets_the_controlnet_prompt(tiny):
    _, clip, _, xl_clip, _ = tiny
    base = cond(1.0, 2.0, strength=0.5)
    (out,) = X.clip_text_encode_controlnet(clip=clip, conditioning=base, text="a dog")
    expected = C.clip_text_encode(text="a dog", clip=clip)[0][0][0]
    assert len(out) == 2
    for (t, opts), (t0, _) in zip(out, base, strict=True):
        assert t is t0 and opts["strength"] == 0.5  # the entry's own prompt and options are kept
        assert torch.equal(opts["cross_attn_controlnet"], expected)
        assert "pooled_output_controlnet" not in opts  # SD1's encoder has no pooled vector here
    assert base[0][1] == {"strength": 0.5}  # the input is not modified
    (xl,) = X.clip_text_encode_controlnet(clip=xl_clip, conditioning=base, text="a cat")
    ref = C.clip_text_encode(text="a cat", clip=xl_clip)[0][0]
    assert torch.equal(xl[0][1]["cross_attn_controlnet"], ref[0])
    assert torch.equal(xl[0][1]["pooled_output_controlnet"], ref[1]["pooled_output"])


def test_set_union_controlnet_type_stores_comfyuis_type_number(tiny):
    *_, cnet = tiny
    (depth,) = X.set_union_controlnet_type(control_net=cnet, type="depth")
    (tile,) = X.set_union_controlnet_type(control_net=depth, type="tile")
    (auto,) = X.set_union_controlnet_type(control_net=depth, type="auto")
    assert depth.extra_args == {"control_type": [1]} and tile.extra_args == {"control_type": [6]}
    assert auto.extra_args == {"control_type": []}
    assert depth is not cnet and not hasattr(cnet, "extra_args")  # a copy; the loaded value unchanged
    assert depth.module is cnet.module and depth.kind == "controlnet"  # the weights are shared
    assert list(X.UNION_CONTROLNET_TYPES.values()) == list(range(8))
    # The typed copy applies like the original.
    (p,) = CN.controlnet_apply(cond(0.0), depth, torch.rand(1, 16, 16, 3), 0.7)
    assert p[0][1]["control"].model is cnet.module and p[0][1]["control"].strength == 0.7


def test_controlnet_inpainting_alimama_apply_is_apply_advanced_for_plain_controlnets(tiny):
    _, _, vae, _, cnet = tiny
    img = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:8, 4:8] = 1.0
    pos, neg = cond(1.0, x=1), cond(2.0)
    p, n = X.controlnet_inpainting_alimama_apply(pos, neg, cnet, vae, img, mask, 0.8, 0.1, 0.9)
    ctrl = p[0][1]["control"]
    assert n[0][1]["control"] is ctrl and p[0][1]["x"] == 1 and "control" not in pos[0][1]
    assert (ctrl.model, ctrl.strength, ctrl.start_percent, ctrl.end_percent) == (cnet.module, 0.8, 0.1, 0.9)
    # ComfyUI masks the hint only for ControlNets that take the mask as an input; this one gets the image.
    assert torch.equal(ctrl.hint, img.movedim(-1, 1))
    assert X.controlnet_inpainting_alimama_apply(pos, neg, cnet, vae, img, mask, 0.0, 0.0, 1.0) == (pos, neg)
    masked_input = copy.copy(cnet)
    masked_input.concat_mask = True  # what ComfyUI's SD3 / FLUX inpainting ControlNets say
    with pytest.raises(X.UnsupportedModelError, match="ControlNetInpaintingAliMamaApply.*mask"):
        X.controlnet_inpainting_alimama_apply(pos, neg, masked_input, vae, img, mask, 1.0, 0.0, 1.0)


def test_instruct_pix_to_pix_conditioning_crops_encodes_and_sets_concat_latent(tiny):
    _, _, vae, _, _ = tiny
    pixels = torch.rand(2, 21, 19, 3, generator=torch.Generator().manual_seed(5))
    pos, neg = cond(1.0, 2.0, keep="p"), cond(3.0)
    p, n, latent = X.instruct_pix_to_pix_conditioning(positive=pos, negative=neg, vae=vae, pixels=pixels)
    # 21 x 19 -> 16 x 16, centred: offsets (21 % 8) // 2 = 2 rows and (19 % 8) // 2 = 1 column.
    expected = vae.encode(pixels[:, 2:18, 1:17, :])
    assert expected.shape == (2, 4, 8, 8)
    for entry in (*p, *n):
        assert torch.equal(entry[1]["concat_latent_image"], expected)
    assert [e[0] for e in p] == [e[0] for e in pos] and p[1][1]["keep"] == "p"
    assert "concat_latent_image" not in pos[0][1]
    assert set(latent) == {"samples"} and torch.equal(latent["samples"], torch.zeros(2, 4, 8, 8))
    # A size that is already a multiple of 8 is encoded as it is.
    even = pixels[:, :16, :16, :]
    p2, _, _ = X.instruct_pix_to_pix_conditioning(positive=pos, negative=neg, vae=vae, pixels=even)
    assert torch.equal(p2[0][1]["concat_latent_image"], vae.encode(even))


def test_reference_latent_appends_samples():
    base = cond(1.0)
    a, b = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    assert X.reference_latent(base) == (base,)
    (one,) = X.reference_latent(base, {"samples": a})
    (two,) = X.reference_latent(one, {"samples": b})
    assert one[0][1]["reference_latents"] == [a]
    assert two[0][1]["reference_latents"][0] is a and two[0][1]["reference_latents"][1] is b
    assert "reference_latents" not in base[0][1]


# ---- hooks ----------------------------------------------------------------------------------------------


def test_conditioning_timesteps_range_outputs_range_before_and_after():
    assert H.conditioning_timesteps_range(0.25, 0.75) == ((0.25, 0.75), (0.0, 0.25), (0.75, 1.0))


def test_conditioning_set_properties_sets_mask_and_range_only_when_given():
    base = cond(1.0, extra=1)
    (same,) = H.conditioning_set_properties(base, 0.3, "mask bounds")
    assert same[0][1] == {"extra": 1} and same[0][0] is base[0][0]
    mask = torch.zeros(8, 8)
    mask[2:4, 2:4] = 1.0
    (out,) = H.conditioning_set_properties(base, 0.3, "mask bounds", mask=mask, timesteps=(0.2, 0.6))
    opts = out[0][1]
    assert opts["mask"].shape == (1, 8, 8) and torch.equal(opts["mask"][0], mask)
    assert (opts["set_area_to_bounds"], opts["mask_strength"]) == (True, 0.3)
    assert (opts["start_percent"], opts["end_percent"], opts["extra"]) == (0.2, 0.6, 1)
    assert "strength" not in opts and base[0][1] == {"extra": 1}
    (default_area,) = H.conditioning_set_properties(base, 1.0, "default", mask=mask)
    assert default_area[0][1]["set_area_to_bounds"] is False and "start_percent" not in default_area[0][1]


def test_set_properties_and_combine_and_pair_variants():
    pos, neg, pos_new, neg_new = cond(1.0), cond(2.0), cond(3.0, 4.0), cond(5.0)
    (single,) = H.conditioning_set_properties_and_combine(pos, pos_new, 1.0, "default", timesteps=(0.0, 0.5))
    assert [float(e[0][0, 0, 0]) for e in single] == [1.0, 3.0, 4.0]
    assert (
        "end_percent" not in single[0][1]
        and single[1][1]["end_percent"] == 0.5 == single[2][1]["end_percent"]
    )
    p, n = H.pair_conditioning_set_properties(pos_new, neg_new, 2.0, "default", mask=torch.ones(1, 4, 4))
    assert [e[1]["mask_strength"] for e in p + n] == [2.0, 2.0, 2.0]
    p, n = H.pair_conditioning_set_properties_and_combine(
        pos, neg, pos_new, neg_new, 1.0, "default", None, None, (0.5, 1.0)
    )
    assert [float(e[0][0, 0, 0]) for e in p] == [1.0, 3.0, 4.0] and [float(e[0][0, 0, 0]) for e in n] == [
        2.0,
        5.0,
    ]
    assert "start_percent" not in n[0][1] and n[1][1]["start_percent"] == 0.5
    p, n = H.pair_conditioning_combine(pos, neg, pos_new, neg_new)
    assert [float(e[0][0, 0, 0]) for e in p] == [1.0, 3.0, 4.0] and [float(e[0][0, 0, 0]) for e in n] == [
        2.0,
        5.0,
    ]
    assert p[0][1] is not pos[0][1]  # new option dicts: later nodes cannot change the inputs


@pytest.mark.parametrize(
    "node",
    [
        "conditioning_set_properties",
        "conditioning_set_properties_and_combine",
        "pair_conditioning_set_properties",
        "pair_conditioning_set_properties_and_combine",
    ],
)
def test_values_other_than_hooks_are_refused(node):
    # HOOKS values themselves are applied (tests/unit/nodes/test_hooks*.py).
    n_conds = {"conditioning_set_properties": 1, "pair_conditioning_set_properties_and_combine": 4}.get(
        node, 2
    )
    args = [cond(1.0)] * n_conds
    with pytest.raises(TypeError, match="hooks must be a HOOKS value"):
        getattr(H, node)(*args, 1.0, "default", hooks=object())


def test_set_properties_samples_like_the_classic_nodes(tiny):
    """Timesteps Range -> Cond Set Props Combine gives the picture of ConditioningSetTimestepRange ->
    ConditioningCombine: the options reach the sampler as the classic nodes' do."""
    model, clip, _, _, _ = tiny
    a = C.clip_text_encode(text="a red house", clip=clip)[0]
    b = C.clip_text_encode(text="a blue sky", clip=clip)[0]
    neg = C.clip_text_encode(text="", clip=clip)[0]
    rng, _, after = H.conditioning_timesteps_range(0.0, 0.4)
    (hooked,) = H.conditioning_set_properties_and_combine(a, b, 1.0, "default", timesteps=after)
    classic = C.conditioning_combine(a, C.conditioning_set_timestep_range(b, 0.4, 1.0)[0])[0]
    assert rng == (0.0, 0.4)

    def sample(positive: Any) -> torch.Tensor:
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        args = dict(seed=7, steps=4, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0)
        out = S.ksampler(
            model=model,
            positive=positive,
            negative=neg,
            latent_image=latent,
            context=node_context()[0],
            **args,
        )
        return out[0]["samples"]

    result = sample(hooked)
    assert torch.equal(result, sample(classic))
    assert not torch.equal(result, sample(C.conditioning_combine(a, b)[0]))  # the range does change it


def test_sd_4x_upscale_conditioning_quarter_size_concat_image():
    images = torch.rand(2, 10, 14, 3, generator=torch.Generator().manual_seed(6))
    pos, neg = cond(1.0, x=2), cond(2.0)
    p, n, latent = X.sd_4x_upscale_conditioning(images, pos, neg, 1.5, 0.3)
    # target 21 x 15 pixels (round(14 * 1.5), round(10 * 1.5)) -> a 5 x 3 quarter; 14:10 is narrower
    # than 5:3, so round((10 - 10 * 1.4 / (5/3)) / 2) = 1 row is cut at the top and at the bottom.
    expected = torch.nn.functional.interpolate(
        images.movedim(-1, 1)[:, :, 1:9, :] * 2.0 - 1.0, size=(3, 5), mode="bilinear"
    )
    for entry in (*p, *n):
        assert torch.allclose(entry[1]["concat_image"], expected) and entry[1]["noise_augmentation"] == 0.3
    assert p[0][1]["x"] == 2 and "concat_image" not in pos[0][1]
    assert torch.equal(latent["samples"], torch.zeros(2, 4, 3, 5))
    assert X.sd_4x_upscale_conditioning(images, pos, neg, 4.0, 0.0)[2]["samples"].shape == (2, 4, 10, 14)


def test_timesteps_range_links_in_a_workflow(tmp_path):
    """Through the executor: a TIMESTEPS_RANGE output (AFTER_RANGE) validates against and reaches
    ConditioningSetProperties' optional input."""
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "sd1.safetensors", "sd1", seed=1)
    runtime = build_runtime(Folders.create(tmp_path), load_custom_nodes=False)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {
            "class_type": "ConditioningTimestepsRange",
            "inputs": {"start_percent": 0.1, "end_percent": 0.3},
        },
        "4": {
            "class_type": "ConditioningSetProperties",
            "inputs": {
                "cond_NEW": ["2", 0],
                "strength": 1.0,
                "set_cond_area": "default",
                "timesteps": ["3", 2],
            },
        },
    }
    ok = runtime.executor.run(parse_api_workflow(prompt), targets=["4"])
    assert ok.status == "success", ok.errors
    (entry,) = ok.output("4")
    assert (entry[1]["start_percent"], entry[1]["end_percent"]) == (0.3, 1.0)
