"""RenormCFG's guidance function against hand-computed values, SkipLayerGuidanceDiTSimple on a tiny FLUX.1
model against the guided estimate computed from its parts, and T5TokenizerOptions' padding on the tiny
FLUX.1 text encoders."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.diffusion.models import flux
from engine.diffusion.sampling.guidance import CFGDenoiser
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.flow_checkpoints import write_flow_file, write_text_encoder_files
from tests.unit.diffusion.t5_fixtures import train_spiece
from tests.unit.nodes.node_support import builtin, node_context

C, L, G, T = (builtin(n) for n in ("conditioning", "loaders", "guidance_extra", "text_options"))


def test_renorm_cfg_caps_the_guided_norm_and_truncates_above_cfg_trunc(tmp_path):
    fn = G.renorm_cfg_function(cfg_trunc=5.0, renorm_cfg=1.5)
    x = torch.tensor([[10.0, 10.0]]).reshape(1, 2, 1, 1)
    cond = torch.tensor([[3.0, 4.0]]).reshape(1, 2, 1, 1)  # norm 5
    uncond = torch.zeros(1, 2, 1, 1)
    args = {"cond_denoised": cond, "uncond_denoised": uncond, "cond_scale": 2.0, "input": x}
    # Guided: (6, 8), norm 10 >= 1.5 * 5, so scaled to norm 7.5: (4.5, 6).
    out = fn({**args, "timestep": torch.tensor([1.0])})
    torch.testing.assert_close(x - out, torch.tensor([4.5, 6.0]).reshape(1, 2, 1, 1))
    # Under the cap it is plain CFG; at or above cfg_trunc the positive estimate alone.
    loose = G.renorm_cfg_function(cfg_trunc=5.0, renorm_cfg=3.0)({**args, "timestep": torch.tensor([1.0])})
    torch.testing.assert_close(x - loose, torch.tensor([6.0, 8.0]).reshape(1, 2, 1, 1))
    torch.testing.assert_close(x - fn({**args, "timestep": torch.tensor([5.0])}), cond)
    off = G.renorm_cfg_function(cfg_trunc=5.0, renorm_cfg=0.0)({**args, "timestep": torch.tensor([1.0])})
    torch.testing.assert_close(x - off, torch.tensor([6.0, 8.0]).reshape(1, 2, 1, 1))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("guidance_extra")
    models = root / "models"
    write_flow_file(models / "checkpoints" / "flux.safetensors", "flux", config=flux.TINY)
    write_text_encoder_files(models / "text_encoders", "flux")
    train_spiece(models / "text_encoders" / "t5_tokenizer" / "spiece.model")
    ctx = node_context(folders=Folders.create(root), manager=ModelManager(select_device(MemoryOptions())))[0]
    model, clip, _ = L.checkpoint_loader_simple(ckpt_name="flux.safetensors", context=ctx)
    return model, clip


def _skip(args: Any, extra: Any) -> Any:
    return args


def test_skip_layer_guidance_simple_skips_blocks_only_on_the_negative(env):
    model, clip = env
    pos = C.clip_text_encode(text="a cat", clip=clip)[0]
    neg = C.clip_text_encode(text="a dog", clip=clip)[0]
    x, sigma = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.7])
    (m,) = G.skip_layer_guidance_dit_simple(model, "0", "1", 0.0, 1.0)
    with m.use():
        got = CFGDenoiser(m.diffusion_model(), pos, neg, 3.0, like=x, model_options=m.sampling_options())(
            x, sigma
        )
        dm = model.diffusion_model()
        cond = CFGDenoiser(dm, pos, None, 1.0, like=x)(x, sigma)
        dit = {("double_block", 0): _skip, ("single_block", 1): _skip}
        skip_opts = {"transformer_options": {"patches_replace": {"dit": dit}}}
        skipped = CFGDenoiser(dm, neg, None, 1.0, like=x, model_options=skip_opts)(x, sigma)
        plain = CFGDenoiser(dm, pos, neg, 3.0, like=x)(x, sigma)
    torch.testing.assert_close(got, skipped + 3.0 * (cond - skipped), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)
    # Outside the step range (the last 1% of the schedule) it is plain CFG; no layers: the model itself.
    (late,) = G.skip_layer_guidance_dit_simple(model, "0", "1", 0.99, 1.0)
    with late.use():
        d = CFGDenoiser(late.diffusion_model(), pos, neg, 3.0, like=x, model_options=late.sampling_options())
        torch.testing.assert_close(d(x, sigma), plain)
    assert G.skip_layer_guidance_dit_simple(model, "", "none", 0.0, 1.0) == (model,)


def test_t5_tokenizer_options_set_the_t5_padding_on_a_clone(env):
    _, clip = env
    plain = C.clip_text_encode(text="a cat", clip=clip)[0][0][0]
    assert plain.shape[1] == 256  # FLUX.1's T5 rows are padded to 256 tokens
    (short,) = T.t5_tokenizer_options(clip, min_padding=0, min_length=0)
    (padded,) = T.t5_tokenizer_options(clip, min_padding=5, min_length=0)
    (long,) = T.t5_tokenizer_options(clip, min_padding=2, min_length=300)
    n = C.clip_text_encode(text="a cat", clip=short)[0][0][0].shape[1]  # tokens + </s>, unpadded
    assert n < 20
    assert C.clip_text_encode(text="a cat", clip=padded)[0][0][0].shape[1] == n + 5
    assert C.clip_text_encode(text="a cat", clip=long)[0][0][0].shape[1] == 300
    # The input CLIP (and the shared encoder) keep their own padding.
    assert torch.equal(C.clip_text_encode(text="a cat", clip=clip)[0][0][0], plain)
    assert short.tokenizer_options["t5xxl_min_length"] == 0 and not getattr(clip, "tokenizer_options", {})
