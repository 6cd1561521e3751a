"""The image-conditioning nodes on tiny files in the real layouts: CLIP vision files (HF and OpenCLIP) through
CLIPVisionLoader / CLIPVisionEncode, T2I-Adapter style (.pth) and FLUX.1 Redux files through StyleModelLoader /
StyleModelApply, and an SD2.1-unCLIP-shaped checkpoint through unCLIPCheckpointLoader / unCLIPConditioning /
KSampler (the image reaches the UNet's y, with the sampler's seed)."""

from __future__ import annotations

import pytest
import torch

from engine.api.models import (
    ClipVisionHandle,
    ModelFileError,
    load_checkpoint_handles,
    load_clip_vision_handle,
)
from engine.diffusion.vision.clip_vision import VisionConfig
from engine.diffusion.vision.preprocess import clip_preprocess
from engine.diffusion.vision.unclip import NoiseAugmentor, revision_pooled, unclip_adm
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.factories.vision import (
    redux_state_dict,
    style_adapter_state_dict,
    write_clip_vision,
    write_redux,
    write_unclip_checkpoint,
)
from tests.unit.nodes.node_support import builtin, node_context

V, S, L, C = builtin("vision_conditioning"), builtin("sampling"), builtin("loaders"), builtin("conditioning")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_env")
    models = root / "models"
    write_clip_vision(models / "clip_vision" / "hf.safetensors", VisionConfig.tiny(), seed=1)
    write_clip_vision(
        models / "clip_vision" / "oc.safetensors", VisionConfig.tiny(), seed=1, layout="openclip"
    )
    write_clip_vision(models / "clip_vision" / "sig.safetensors", VisionConfig.tiny(kind="siglip"), seed=2)
    (models / "clip_vision" / "junk.safetensors").write_bytes(b"not a file")
    (models / "style_models").mkdir(parents=True)
    torch.save(
        style_adapter_state_dict(width=32, context_dim=32, tokens=4, seed=3),
        models / "style_models" / "style.pth",
    )
    write_redux(models / "style_models" / "redux.safetensors", redux_dim=32, txt_dim=48, seed=4)
    write_unclip_checkpoint(models / "checkpoints" / "unclip.safetensors", seed=5)
    write_unclip_checkpoint(models / "checkpoints" / "unclip_novision.safetensors", seed=5, with_vision=False)
    ctx, _ = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))
    return ctx


def _image(seed, h=40, w=56):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_clip_vision_loader_and_encode(env):
    (hf,) = V.clip_vision_loader("hf.safetensors", context=env)
    (oc,) = V.clip_vision_loader("oc.safetensors", context=env)
    assert isinstance(hf, ClipVisionHandle) and hf.image_size == 28
    image = _image(1)
    (out,) = V.clip_vision_encode(hf, image, "center")
    (out_oc,) = V.clip_vision_encode(oc, image, "center")
    assert out.image_embeds.shape == (1, 16) and out.last_hidden_state.shape == (1, 5, 32)
    assert out["penultimate_hidden_states"].shape == (1, 5, 32) and out.mm_projected is None
    assert (out.image_embeds - out_oc.image_embeds).abs().max() <= 1e-5
    with torch.no_grad():
        want = hf.module(clip_preprocess(image, 28, crop=True))
    assert torch.allclose(out.image_embeds, want.image_embeds, atol=1e-6)
    (squashed,) = V.clip_vision_encode(hf, image, "none")
    assert not torch.allclose(squashed.image_embeds, out.image_embeds, atol=1e-3)


def test_siglip_file_gives_all_hidden_states(env):
    (sig,) = V.clip_vision_loader("sig.safetensors", context=env)
    (out,) = V.clip_vision_encode(sig, _image(2), "center")
    assert sig.image_mean == [0.5, 0.5, 0.5]
    assert out.last_hidden_state.shape == (1, 4, 32) and torch.equal(out.image_embeds, out.last_hidden_state)
    assert out.all_hidden_states.shape == (1, 2, 4, 32)


def test_bad_clip_vision_file_named(env):
    with pytest.raises(ModelFileError, match="junk.safetensors"):
        V.clip_vision_loader("junk.safetensors", context=env)


def test_t2i_style_model_apply(env):
    (cv,) = V.clip_vision_loader("hf.safetensors", context=env)
    (style,) = V.style_model_loader("style.pth", context=env)
    (out,) = V.clip_vision_encode(cv, _image(3), "center")
    txt = torch.randn(1, 77, 32)
    (cond,) = V.style_model_apply([[txt, {}]], style, out, 0.5, "multiply")
    with torch.no_grad():
        tokens = style.module(out.last_hidden_state)
    assert cond[0][0].shape == (1, 81, 32)
    assert torch.equal(cond[0][0][:, :77], txt) and torch.allclose(
        cond[0][0][:, 77:], tokens * 0.5, atol=1e-6
    )


def test_redux_style_model_apply(env):
    (sig,) = V.clip_vision_loader("sig.safetensors", context=env)
    (redux,) = V.style_model_loader("redux.safetensors", context=env)
    (out,) = V.clip_vision_encode(sig, _image(4), "center")
    txt = torch.randn(1, 6, 48)
    (cond,) = V.style_model_apply([[txt, {"guidance": 3.5}]], redux, out, 1.0, "multiply")
    sd = redux_state_dict(redux_dim=32, txt_dim=48, seed=4)
    up = torch.nn.functional.silu(out.last_hidden_state @ sd["redux_up.weight"].T + sd["redux_up.bias"])
    want = up @ sd["redux_down.weight"].T + sd["redux_down.bias"]
    assert cond[0][0].shape == (1, 10, 48) and cond[0][1] == {"guidance": 3.5}
    assert torch.allclose(cond[0][0][:, 6:], want, atol=1e-5)


def test_unclip_loader_outputs(env):
    model, clip, vae, cv = V.unclip_checkpoint_loader("unclip.safetensors", context=env)
    assert isinstance(cv, ClipVisionHandle) and clip is not None and vae is not None
    assert model.family == "sd2_v" and cv.config.projection_dim == 16
    *_, none = V.unclip_checkpoint_loader("unclip_novision.safetensors", context=env)
    assert none is None


def test_unclip_conditioning_reaches_y(env):
    model, clip, _, cv = V.unclip_checkpoint_loader("unclip.safetensors", context=env)
    (out,) = V.clip_vision_encode(cv, _image(5), "center")
    (cond,) = C.clip_text_encode("a photo", clip)
    (un,) = V.unclip_conditioning(cond, out, 1.3, 0.2)
    dm = model.diffusion_model()
    dm.seed = 9
    y = dm.encode_adm(un[0][1], 64, 64)
    want = unclip_adm(un[0][1]["unclip_conditioning"], NoiseAugmentor(16), seed=9, merge_noise=0.05)
    assert y is not None and y.shape == (1, 32) and torch.allclose(y, want)
    assert torch.equal(dm.encode_adm(cond[0][1], 64, 64), torch.zeros(1, 32))


def _sample(env, model, positive, negative, seed=3):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (result,) = S.ksampler(model, seed, 2, 4.0, "euler", "normal", positive, negative, latent, context=env)
    return result["samples"]


@pytest.mark.slow
def test_unclip_image_changes_the_sample_and_seed_reaches_y(env):
    model, clip, _, cv = V.unclip_checkpoint_loader("unclip.safetensors", context=env)
    (cond,) = C.clip_text_encode("a photo", clip)
    (neg,) = C.clip_text_encode("", clip)
    outs = [V.clip_vision_encode(cv, _image(s), "center")[0] for s in (6, 7)]
    a = _sample(env, model, V.unclip_conditioning(cond, outs[0], 1.0, 0.0)[0], neg)
    b = _sample(env, model, V.unclip_conditioning(cond, outs[1], 1.0, 0.0)[0], neg)
    plain = _sample(env, model, cond, neg)
    zero = _sample(env, model, V.unclip_conditioning(cond, outs[0], 0.0, 0.0)[0], neg)
    assert not torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, plain, atol=1e-4)
    assert torch.equal(zero, plain)  # strength 0 leaves the conditioning (and y = zeros) as it is
    seen = []
    clone = model.clone()
    inner = clone.adm_builder

    def recording(c, w, h):
        seen.append(c.get("seed"))
        return inner(c, w, h)

    clone.adm_builder = recording
    _sample(env, clone, V.unclip_conditioning(cond, outs[0], 1.0, 0.0)[0], neg, seed=1234)
    assert seen and set(seen) == {1234}


@pytest.mark.slow
def test_unclip_checkpoint_via_checkpoint_loader_simple_samples(env):
    model, clip, _ = L.checkpoint_loader_simple("unclip.safetensors", context=env)
    (cond,) = C.clip_text_encode("a photo", clip)
    out = _sample(env, model, cond, cond)
    assert torch.isfinite(out).all()


def test_unclip_conditioning_appends_comfyuis_entries():
    base = [[torch.ones(1, 2, 4), {}], [torch.zeros(1, 2, 4), {"keep": 1}]]
    out_vision, other_vision = object(), object()
    assert V.unclip_conditioning(base, out_vision, 0.0, 0.5) == (base,)
    (once,) = V.unclip_conditioning(base, out_vision, 1.5, 0.25)
    (twice,) = V.unclip_conditioning(once, other_vision, -2.0, 0.0)
    assert once[0][1]["unclip_conditioning"] == [
        {"clip_vision_output": out_vision, "strength": 1.5, "noise_augmentation": 0.25}
    ]
    assert [u["clip_vision_output"] for u in twice[1][1]["unclip_conditioning"]] == [out_vision, other_vision]
    assert twice[1][1]["unclip_conditioning"][1]["strength"] == -2.0 and twice[1][1]["keep"] == 1
    assert len(once[0][1]["unclip_conditioning"]) == 1 and "unclip_conditioning" not in base[0][1]


def test_sdxl_revision_uses_the_image_embedding_as_pooled(env, tmp_path):
    xl = write_tiny_checkpoint(tmp_path / "xl.safetensors", "sdxl", seed=8)
    model, clip, _ = load_checkpoint_handles(xl, manager=env.models)
    vision = VisionConfig(32, 2, 1, 64, 14, 28, projection_dim=32)  # image embeds as wide as the pooled text
    handle = load_clip_vision_handle(
        write_clip_vision(tmp_path / "g.safetensors", vision, seed=9), manager=env.models
    )
    (out,) = V.clip_vision_encode(handle, _image(8), "center")
    (cond,) = C.clip_text_encode("a photo", clip)
    (rev,) = V.unclip_conditioning(cond, out, 1.0, 0.3)
    dm = model.diffusion_model()
    dm.seed = 5
    plain, revised = dm.encode_adm(cond[0][1], 64, 64), dm.encode_adm(rev[0][1], 64, 64)
    want = revision_pooled({**rev[0][1], "seed": 5})
    assert want is not None and torch.allclose(revised[:, :32], want)
    assert torch.equal(plain[:, 32:], revised[:, 32:])  # the size embeddings stay
    assert torch.allclose(plain[:, :32], cond[0][1]["pooled_output"])
