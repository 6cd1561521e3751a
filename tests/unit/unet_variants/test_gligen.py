"""GLIGEN: the model built from a file in ComfyUI's layout, its position net and fusers against hand
computations, the UNet patch (fuser k on transformer k; zero gates change nothing), the conditioning that
GLIGENTextBoxApply writes and how the sampler hands the boxes to the negative side."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints.io import CheckpointError
from engine.diffusion.models.gligen import MAX_OBJECTS, build_gligen, fourier_embed
from engine.diffusion.models.unet import UNetConfig, UNetModel
from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.gligen_cond import with_gligen_patch
from engine.diffusion.sampling.guidance import CFGDenoiser
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from engine.handles.gligen import GligenHandle, load_gligen
from engine.handles.loading import load_checkpoint_handles
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.factories.unet_variants import gligen_state_dict, write_gligen_file
from tests.unit.nodes.node_support import builtin

CFG = UNetConfig.tiny()
# (block kind, channels) of the tiny UNet's transformers in UNet order: 2 input, the middle, 4 output.
TRANSFORMER_CHANNELS = [32, 64, 64, 64, 64, 32, 32]


def test_model_is_built_in_unet_order_from_prefixed_keys():
    sd = gligen_state_dict(CFG, seed=1)
    model = build_gligen({"diffusion_model." + k if ".fuser." in k else k: v for k, v in sd.items()})
    assert [f.linear.out_features for f in model.module_list] == TRANSFORMER_CHANNELS
    # Block numbers sort numerically (output_blocks.10 after output_blocks.2), kinds in UNet order.
    assert torch.equal(
        model.module_list[2].alpha_attn, sd["middle_block.1.1.transformer_blocks.0.fuser.alpha_attn"]
    )
    assert torch.equal(
        model.module_list[-1].linear.weight, sd["output_blocks.3.1.transformer_blocks.0.fuser.linear.weight"]
    )
    assert model.module_list[0].attn.heads == 8  # 768-wide grounding tokens: SD1's 8 heads


def test_a_file_without_gligen_keys_is_refused(tmp_path):
    path = tmp_path / "not_gligen.safetensors"
    save_file({"input_blocks.0.0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not a GLIGEN model"):
        load_gligen(path)


def test_grounding_tokens_match_a_hand_computation():
    model = build_gligen(gligen_state_dict(CFG, seed=2))
    net = model.position_net
    emb = torch.randn(1, 32)
    objs = model.grounding_tokens(2, 8, 16, [(emb, 4, 8, 2, 4)])  # (embedding, h, w, y, x) in latent pixels
    assert objs.shape == (2, MAX_OBJECTS, 768)
    box = torch.tensor([4 / 16, 2 / 8, 12 / 16, 6 / 8])
    first = net.linears(torch.cat([emb[0], fourier_embed(box)]))
    null = net.linears(torch.cat([net.null_positive_feature, net.null_position_feature]))
    assert torch.allclose(objs[0, 0], first, atol=1e-5) and torch.allclose(objs[1, 0], first, atol=1e-5)
    assert torch.allclose(objs[0, 1:], null.expand(MAX_OBJECTS - 1, -1), atol=1e-5)


def test_fourier_embedding_layout():
    box = torch.tensor([0.1, 0.2, 0.3, 0.4])
    e = fourier_embed(box)
    assert e.shape == (64,)
    f1 = 100 ** (1 / 8)
    assert torch.allclose(e[8:12], torch.sin(f1 * box)) and torch.allclose(e[12:16], torch.cos(f1 * box))


def test_fuser_matches_a_hand_computation():
    fuser = build_gligen(gligen_state_dict(CFG, seed=3)).module_list[1]
    x, objs = torch.randn(2, 5, 64), torch.randn(2, MAX_OBJECTS, 768)
    with torch.no_grad():
        tokens = torch.cat([x, fuser.linear(objs)], dim=1)
        h = x + torch.tanh(fuser.alpha_attn) * fuser.attn(fuser.norm1(tokens))[:, :5]
        want = h + torch.tanh(fuser.alpha_dense) * fuser.ff(fuser.norm2(h))
        assert torch.allclose(fuser(x, objs), want, atol=1e-6)


def _unet_out(unet, options):
    g = torch.Generator().manual_seed(4)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 3, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([400.0]), ctx, transformer_options=options)


@pytest.mark.slow
def test_patch_runs_fuser_k_on_transformer_k_and_zero_gates_change_nothing():
    torch.manual_seed(0)
    unet = UNetModel(CFG).eval()
    plain = _unet_out(unet, {})
    box = [(torch.randn(1, 32), 4, 4, 0, 2)]
    for gate, changed in ((None, True), (0.0, False)):
        model = build_gligen(gligen_state_dict(CFG, seed=5, gate=gate))
        seen: list[tuple[int, int]] = []
        for i, fuser in enumerate(model.module_list):
            fuser.register_forward_hook(lambda m, a, out, i=i, seen=seen: seen.append((i, a[0].shape[-1])))
        out = _unet_out(
            unet, with_gligen_patch({}, ("position", GligenHandle(model, "g"), box), torch.zeros(1, 4, 8, 8))
        )
        assert seen == list(enumerate(TRANSFORMER_CHANNELS))
        assert bool((out - plain).abs().max() > 1e-4) is changed
        if not changed:
            assert torch.equal(out, plain)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("gligen") / "sd1.safetensors", "sd1", seed=6)
    return load_checkpoint_handles(path, manager=ModelManager(select_device(MemoryOptions())))


@pytest.mark.slow
def test_textbox_node_appends_boxes_with_the_unprojected_pooled_vector(sd1, tmp_path):
    _, clip, _ = sd1
    nodes = builtin("gligen")
    gligen = load_gligen(write_gligen_file(tmp_path / "g.safetensors", CFG))
    base = clip.encode_conditioning("a house")
    (one,) = nodes.gligen_textbox_apply(base, clip, gligen, "a cat", 64, 48, 24, 8)
    (two,) = nodes.gligen_textbox_apply(one, clip, gligen, "a dog", 16, 16, 0, 40)
    kind, model, boxes = two[0][1]["gligen"]
    assert (kind, model) == ("position", gligen) and "gligen" not in base[0][1]
    assert [b[1:] for b in boxes] == [(6, 8, 1, 3), (2, 2, 5, 0)]  # (h, w, y, x) // 8
    assert len(one[0][1]["gligen"][2]) == 1
    # The phrase embedding: CLIP-L's pooler output (final-norm state at the end token, no projection).
    ids = torch.tensor([[t[0] for t in clip.tokenize("a cat")["l"][0]]])
    with torch.no_grad():
        want = clip.encoder.towers["clip_l"](input_ids=ids).pooler_output
    assert boxes[0][0].shape == (1, 32) and torch.allclose(boxes[0][0], want, atol=1e-5)


class PatchRecorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.patches: list[int] = []

    def forward(self, x, t, context=None, y=None, control=None, transformer_options=None):  # type: ignore[no-untyped-def]
        self.patches.append(len((transformer_options or {}).get("patches", {}).get("middle_patch", [])))
        return x * 0


def test_the_negative_side_takes_the_positive_boxes():
    model = build_gligen(gligen_state_dict(CFG, seed=7))
    gl = ("position", GligenHandle(model, "g"), [(torch.randn(1, 32), 2, 2, 0, 0)])
    net = PatchRecorder()
    dm = DiffusionModel(net, ModelSamplingDiscrete("eps"))
    like = torch.zeros(1, 4, 8, 8)
    positive = [[torch.zeros(1, 3, 8), {"gligen": gl}]]
    negative = [[torch.zeros(1, 3, 8), {}]]
    CFGDenoiser(dm, positive, negative, 2.0, like=like)(like, torch.tensor([1.0]))
    assert net.patches == [1]  # one batched call of both sides, patched
    # A negative with boxes of its own keeps them: two calls, each with its own patch.
    net.patches.clear()
    own = [[torch.zeros(1, 3, 8), {"gligen": ("position", gl[1], [])}]]
    CFGDenoiser(dm, positive, own, 2.0, like=like)(like, torch.tensor([1.0]))
    assert net.patches == [1, 1]
    # Without boxes on either side nothing is patched.
    net.patches.clear()
    CFGDenoiser(dm, negative, negative, 2.0, like=like)(like, torch.tensor([1.0]))
    assert net.patches == [0]
