"""Hooks on a FLUX.1 transformer: Create Hook Model as LoRA resolves against the transformer's weights
(under the MODEL module's "model." adapter) and samples the other checkpoint."""

from __future__ import annotations

import torch

from engine.diffusion.models import flux
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.flow_checkpoints import write_flow_file, write_text_encoder_files
from tests.unit.diffusion.t5_fixtures import train_spiece
from tests.unit.nodes.node_support import builtin, node_context

L, C, S, HK, HC = (builtin(n) for n in ("loaders", "conditioning", "sampling", "hooks", "hooks_create"))


def test_model_as_lora_hook_on_flux_samples_the_other_checkpoint(tmp_path):
    models = tmp_path / "models"
    for name, seed in (("f1", 1), ("f2", 2)):
        write_flow_file(models / "checkpoints" / f"{name}.safetensors", "flux", config=flux.TINY, seed=seed)
    write_text_encoder_files(models / "text_encoders", "flux")
    train_spiece(models / "text_encoders" / "t5_tokenizer" / "spiece.model")
    ctx = node_context(
        folders=Folders.create(tmp_path), manager=ModelManager(select_device(MemoryOptions()))
    )[0]
    m1, clip, _ = L.checkpoint_loader_simple(ckpt_name="f1.safetensors", context=ctx)
    m2, _, _ = L.checkpoint_loader_simple(ckpt_name="f2.safetensors", context=ctx)
    pos = C.clip_text_encode(text="a cat", clip=clip)[0]
    (hooks,) = HC.create_hook_model_as_lora_model_only(
        ckpt_name="f2.safetensors", strength_model=1.0, context=ctx
    )
    (hooked,) = HK.conditioning_set_properties(
        cond_NEW=pos, strength=1.0, set_cond_area="default", hooks=hooks
    )
    latent = {"samples": torch.zeros(1, 16, 8, 8)}

    def run(model, cond):
        return S.ksampler(model, 3, 3, 1.0, "euler", "simple", cond, cond, latent, context=ctx)[0]["samples"]

    got = run(m1, hooked)
    torch.testing.assert_close(got, run(m2, pos), rtol=0, atol=1e-4)
    assert float((got - run(m1, pos)).abs().max()) > 0.1
