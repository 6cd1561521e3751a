"""HypernetworkLoader on a tiny random SD1 checkpoint with a tiny hypernetwork written in the real `.pt`
layout (integer width keys, a [keys MLP, values MLP] pair of state dicts, option entries): the patched
model's prediction against the unpatched model whose attentions are replaced (torch forward hooks) by
attention written out by hand on k + s * mlp_k(k), v + s * mlp_v(v); bad files reported by name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.api import sampling
from engine.api.models import AdapterFileError
from engine.diffusion.models.unet_blocks import BasicTransformerBlock
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

A, L = builtin("adapter_loaders"), builtin("loaders")
SIGMA = torch.tensor([2.5])
WIDTHS = (32, 64)  # the tiny SD1 UNet's attention input widths (level 0 and the text width, level 1)


def mlp_state(width: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    # Trainers name the linears by their Sequential index (activations sit between them).
    return {
        "linear.0.weight": torch.randn(2 * width, width, generator=gen) * 0.3,
        "linear.0.bias": torch.randn(2 * width, generator=gen) * 0.1,
        "linear.2.weight": torch.randn(width, 2 * width, generator=gen) * 0.3,
        "linear.2.bias": torch.randn(width, generator=gen) * 0.1,
    }


def hypernetwork_dict(seed: int = 3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd: dict = {w: [mlp_state(w, gen), mlp_state(w, gen)] for w in WIDTHS}
    sd.update(
        activation_func="relu", is_layer_norm=False, use_dropout=False, activate_output=False,
        last_layer_dropout=False, layer_structure=[1.0, 2.0, 1.0], name="tiny", step=100,
    )  # fmt: skip
    return sd


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hypernetwork_env")
    write_tiny_checkpoint(root / "models" / "checkpoints" / "a.safetensors", "sd1", seed=21)
    nets = root / "models" / "hypernetworks"
    nets.mkdir(parents=True)
    torch.save(hypernetwork_dict(), nets / "tiny.pt")
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    model, _, _ = L.checkpoint_loader_simple(ckpt_name="a.safetensors", context=ctx)
    gen = torch.Generator().manual_seed(5)
    cond = [[torch.randn(1, 5, 32, generator=gen), {}]]
    x = torch.randn(1, 4, 16, 16, generator=gen) * 2.5
    return model, ctx, cond, x, nets


def predict(model, cond, x):
    guider = sampling.Guider(model, "basic", {"positive": cond}, 1.0)
    with torch.no_grad(), model.use():
        return guider.denoiser(x, latent_image=x, denoise_mask=None)(x, SIGMA)


def hand_mlp(state: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    hidden = torch.clamp(t @ state["linear.0.weight"].T + state["linear.0.bias"], min=0.0)
    return hidden @ state["linear.2.weight"].T + state["linear.2.bias"]


def hand_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    qh, kh, vh = (t.reshape(b, t.shape[1], heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ vh).permute(0, 2, 1, 3).reshape(b, n, inner)


def predict_by_hand(model, cond, x, strength: float):
    sd = hypernetwork_dict()

    def by_hand(m, inputs, output):
        q_in = inputs[0]
        ctx = inputs[1] if len(inputs) > 1 and inputs[1] is not None else q_in
        mlp_k, mlp_v = sd[ctx.shape[-1]]
        k_in, v_in = ctx + strength * hand_mlp(mlp_k, ctx), ctx + strength * hand_mlp(mlp_v, ctx)
        return m.to_out[0](hand_attention(m.to_q(q_in), m.to_k(k_in), m.to_v(v_in), m.heads))

    blocks = [b for b in model.unet.modules() if isinstance(b, BasicTransformerBlock)]
    assert blocks
    hooks = [getattr(b, a).register_forward_hook(by_hand) for b in blocks for a in ("attn1", "attn2")]
    try:
        return predict(model, cond, x)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("strength", [1.0, -0.6])
def test_patched_model_equals_attention_on_transformed_keys_and_values(env, strength):
    model, ctx, cond, x, _ = env
    before = dict(model.model_options)
    plain = predict(model, cond, x)
    (patched,) = A.hypernetwork_loader(
        model=model, hypernetwork_name="tiny.pt", strength=strength, context=ctx
    )
    got = predict(patched, cond, x)
    torch.testing.assert_close(got, predict_by_hand(model, cond, x, strength), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)
    # The input model is unchanged (the patch lives on the clone).
    assert model.model_options == before
    torch.testing.assert_close(predict(model, cond, x), plain, rtol=0, atol=0)


def test_strength_zero_gives_the_unpatched_prediction(env):
    model, ctx, cond, x, _ = env
    (patched,) = A.hypernetwork_loader(model=model, hypernetwork_name="tiny.pt", strength=0.0, context=ctx)
    torch.testing.assert_close(predict(patched, cond, x), predict(model, cond, x), rtol=1e-5, atol=1e-5)


def write_bad(folder: Path, name: str, obj) -> str:
    torch.save(obj, folder / name)
    return name


def test_bad_files_are_reported_by_name(env):
    model, ctx, _, _, nets = env
    wrong_width = hypernetwork_dict()
    wrong_width[48] = wrong_width.pop(64)  # MLPs of width 64 listed under 48
    unknown_activation = {**hypernetwork_dict(), "activation_func": "gelu_tanh"}
    cases = {
        write_bad(nets, "no_widths.pt", {"activation_func": "relu"}): "no attention-width entries",
        write_bad(nets, "wrong_width.pt", wrong_width): "width 48",
        write_bad(nets, "activation.pt", unknown_activation): "gelu_tanh",
        write_bad(nets, "a_list.pt", [torch.zeros(2)]): "expected a dict",
    }
    (nets / "garbage.pt").write_bytes(b"not a torch file at all")
    cases["garbage.pt"] = "not a readable torch file"
    for name, why in cases.items():
        with pytest.raises(AdapterFileError, match=name) as info:
            A.hypernetwork_loader(model=model, hypernetwork_name=name, strength=1.0, context=ctx)
        assert why in str(info.value)


def test_code_running_pickles_are_refused(env):
    model, ctx, _, _, nets = env
    torch.save({32: [{}, {}], "made_by": Path("x")}, nets / "objects.pt")  # a pickled class instance
    with pytest.raises(AdapterFileError, match=r"objects\.pt.*weights-only"):
        A.hypernetwork_loader(model=model, hypernetwork_name="objects.pt", strength=1.0, context=ctx)
