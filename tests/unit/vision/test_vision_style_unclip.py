"""Style models (T2I-Adapter style against its math written out by hand, FLUX.1 Redux), StyleModelApply's
token and attention-mask bookkeeping, and unCLIP's noise augmentation (schedule against diffusers', the ADM
vector against ComfyUI's formula by hand, the seed the sampler hands over)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from engine.diffusion.models.unet_blocks import timestep_embedding
from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.model_sampling import model_sampling_for
from engine.diffusion.vision.style import (
    ReduxImageEncoder,
    StyleAdapter,
    append_style_tokens,
    build_style_model,
)
from engine.diffusion.vision.unclip import (
    NoiseAugmentor,
    UnclipAdmBuilder,
    revision_pooled,
    squaredcos_cap_v2_betas,
    unclip_adm,
)
from tests.factories.vision import redux_state_dict, style_adapter_state_dict


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])


def _style_by_hand(sd, x, heads=8):
    """ComfyUI's StyleAdapter.forward, with the attention written out (q, k, v split from in_proj)."""
    tokens = sd["style_embedding"].shape[1]
    h = _ln(torch.cat([x, sd["style_embedding"].expand(x.shape[0], -1, -1)], 1), sd, "ln_pre")
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_layes."))
    for i in range(layers):
        p = f"transformer_layes.{i}."
        a = _ln(h, sd, p + "ln_1")
        q, k, v = (a @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, -1)
        b, n, c = q.shape
        q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), -1)
        att = (w @ v).transpose(1, 2).reshape(b, n, c)
        h = h + att @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        m = _ln(h, sd, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        h = h + (m * torch.sigmoid(1.702 * m)) @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return _ln(h[:, -tokens:], sd, "ln_post") @ sd["proj"]


def test_style_adapter_matches_its_math():
    sd = style_adapter_state_dict(width=32, context_dim=24, layers=2, tokens=3, seed=1)
    model = build_style_model(sd)
    assert isinstance(model, StyleAdapter)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(x)
    assert got.shape == (2, 3, 24)
    assert (got - _style_by_hand(sd, x)).abs().max() <= 1e-5


def test_redux_matches_its_math():
    sd = redux_state_dict(redux_dim=16, txt_dim=24, seed=3)
    model = build_style_model(sd)
    assert isinstance(model, ReduxImageEncoder)
    x = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(4))
    up = F.silu(x @ sd["redux_up.weight"].T + sd["redux_up.bias"])
    want = up @ sd["redux_down.weight"].T + sd["redux_down.bias"]
    with torch.no_grad():
        assert (model(x) - want).abs().max() <= 1e-5


def test_unknown_style_file_is_refused():
    with pytest.raises(ValueError, match="style_embedding.*redux_up"):
        build_style_model({"conv_in.weight": torch.zeros(1)})


def test_style_tokens_appended_multiply():
    txt = torch.randn(2, 5, 4)
    cond = [[txt, {"pooled_output": torch.ones(1, 3)}]]
    tokens = torch.randn(3, 2, 4)  # 3 images x 2 tokens: flattened into one sequence of 6
    ((out_txt, opts),) = append_style_tokens(cond, tokens, 0.5, "multiply")
    assert out_txt.shape == (2, 11, 4)
    assert torch.equal(out_txt[:, :5], txt)
    assert torch.allclose(out_txt[0, 5:], tokens.reshape(6, 4) * 0.5)
    assert "attention_mask" not in opts and opts["pooled_output"] is cond[0][1]["pooled_output"]
    assert cond[0][0] is txt and "attention_mask" not in cond[0][1]


def test_style_attn_bias_mask():
    txt = torch.randn(1, 3, 4)
    tokens = torch.randn(1, 2, 4)
    ((out_txt, opts),) = append_style_tokens([[txt, {}]], tokens, 0.25, "attn_bias")
    assert torch.equal(out_txt[:, 3:], tokens)  # not scaled
    mask = opts["attention_mask"].float()
    assert mask.shape == (1, 6, 6) and opts["attention_mask_img_shape"] == (1, 1)
    bias = math.log(0.25)
    assert torch.allclose(mask[:, :3, 3:5], torch.full((1, 3, 2), bias), atol=1e-3)
    assert torch.allclose(mask[:, 5:, 3:5], torch.full((1, 1, 2), bias), atol=1e-3)
    assert (
        mask[:, :, :3].abs().max() == 0 and mask[:, :, 5:].abs().max() == 0 and mask[:, 3:5].abs().max() == 0
    )
    # strength 1 with attn_bias and no mask: nothing to bias.
    ((_, plain),) = append_style_tokens([[txt, {}]], tokens, 1.0, "attn_bias")
    assert "attention_mask" not in plain
    # An existing boolean mask is grown and becomes a bias (False -> -inf).
    given = torch.ones(1, 4, 4, dtype=torch.bool)
    given[0, 0, 1] = False
    ((_, grown),) = append_style_tokens([[txt, {"attention_mask": given}]], tokens, 1.0, "multiply")
    g = grown["attention_mask"].float()
    assert g.shape == (1, 6, 6) and g[0, 0, 1] == -math.inf and g[0, :3, 3:5].abs().max() == 0


def test_cosine_schedule_matches_diffusers():
    ours = torch.tensor(squaredcos_cap_v2_betas(), dtype=torch.float32)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").betas
    assert torch.allclose(ours, ref, atol=1e-6)


class _Out:
    def __init__(self, embeds):
        self.image_embeds = embeds


def _by_hand(embed, strength, aug, seed, dim):
    abar = torch.cumprod(1 - torch.tensor(squaredcos_cap_v2_betas(), dtype=torch.float64), 0)
    level = round(999 * aug)
    noise = torch.randn((1, dim), generator=torch.Generator().manual_seed(seed - 10))
    z = abar[level].sqrt().float() * embed.reshape(1, -1) + (1 - abar[level]).sqrt().float() * noise
    emb = timestep_embedding(torch.tensor([level]), dim)
    return torch.cat([z, emb], 1) * strength


def test_unclip_adm_one_and_two_images():
    g = torch.Generator().manual_seed(5)
    e1, e2 = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    aug = NoiseAugmentor(8)
    one = [{"clip_vision_output": _Out(e1), "strength": 1.5, "noise_augmentation": 0.3}]
    got = unclip_adm(one, aug, seed=42)
    assert got.shape == (1, 16)
    assert torch.allclose(got, _by_hand(e1, 1.5, 0.3, 42, 8), atol=1e-5)
    two = one + [{"clip_vision_output": _Out(e2), "strength": 0.5, "noise_augmentation": 0.0}]
    total = _by_hand(e1, 1.5, 0.3, 42, 8) + _by_hand(e2, 0.5, 0.0, 42, 8)
    want = _by_hand(total[:, :8], 1.0, 0.05, 42, 8)  # the sum re-noised at the merge level
    assert torch.allclose(unclip_adm(two, aug, seed=42, merge_noise=0.05), want, atol=1e-5)


def test_unclip_builder_zeros_seed_and_width_check():
    builder = UnclipAdmBuilder(16)
    assert torch.equal(builder({}, 64, 64), torch.zeros(1, 16))
    e = torch.randn(1, 8, generator=torch.Generator().manual_seed(6))
    cond = {
        "unclip_conditioning": [{"clip_vision_output": _Out(e), "strength": 1.0, "noise_augmentation": 0.5}]
    }
    a, b = builder({**cond, "seed": 1}, 64, 64), builder({**cond, "seed": 2}, 64, 64)
    assert torch.allclose(a, _by_hand(e, 1.0, 0.5, 1, 8), atol=1e-5) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="takes 4-wide image embeddings"):
        UnclipAdmBuilder(8)(cond, 64, 64)


def test_diffusion_model_hands_the_seed_to_the_adm_builder():
    seen = []

    def builder(cond, width, height):
        seen.append(cond.get("seed"))
        return None

    dm = DiffusionModel(torch.nn.Identity(), model_sampling_for("eps"), adm_builder=builder)
    dm.encode_adm({}, 8, 8)
    dm.seed = 77
    dm.encode_adm({}, 8, 8)
    assert seen == [None, 77]


def test_revision_pooled_replaces_pooled_text():
    e = torch.randn(1, 6, generator=torch.Generator().manual_seed(7))
    cond = {
        "unclip_conditioning": [{"clip_vision_output": _Out(e), "strength": 2.0, "noise_augmentation": 0.1}]
    }
    assert revision_pooled({"pooled_output": torch.ones(1, 6)}) is None
    got = revision_pooled({**cond, "seed": 3})
    assert got is not None and torch.allclose(got, _by_hand(e, 2.0, 0.1, 3, 6)[:, :6], atol=1e-5)
