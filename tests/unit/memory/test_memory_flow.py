"""The flow families under the model manager's budgets, on the accounting device (the CPU with a simulated
capacity, as the UNet tests do): a FLUX.1 workflow (DualCLIPLoader with CLIP-L + T5, UNETLoader,
CLIPTextEncodeFlux, KSampler) with a device budget smaller than the transformer alone. Text encoding loads
the text encoders (T5 included); sampling offloads them first and streams the transformer partially,
never passing the budget, and the latent equals the one sampled without any budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.diffusion.models import flux
from engine.folders import Folders
from engine.memory.devices import DeviceInfo
from engine.memory.manager import Location, ModelManager
from tests.factories.flow_checkpoints import write_flow_file, write_text_encoder_files
from tests.unit.diffusion.t5_fixtures import train_spiece
from tests.unit.nodes.node_support import builtin, node_context

pytestmark = pytest.mark.slow

L, S, F = builtin("loaders"), builtin("sampling"), builtin("flow")
# Wider than the tiny preset so that the transformer outweighs the tiny CLIP-L + T5 (about 5 MB).
CONFIG = flux.TINY.replace(hidden_size=128, num_heads=4, axes_dim=(4, 14, 14), depth=3, depth_single_blocks=4)


def _folders(tmp_path: Path) -> Folders:
    models = tmp_path / "models"
    write_flow_file(
        models / "diffusion_models" / "flux1-dev.safetensors", "flux", config=CONFIG, layout="diffusion_model"
    )
    write_text_encoder_files(models / "text_encoders", "flux", seed=2)
    train_spiece(models / "text_encoders" / "t5_tokenizer" / "spiece.model")
    return Folders.create(tmp_path)


def _encode(folders: Folders, manager: ModelManager) -> tuple[Any, Any, Any, Any]:
    ctx = node_context(folders=folders, manager=manager)[0]
    (clip,) = L.dual_clip_loader("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", context=ctx)
    (model,) = L.unet_loader("flux1-dev.safetensors", "default", context=ctx)
    positive = F.clip_text_encode_flux(clip, "a red fox", "a red fox in the snow", 3.5)
    positive = positive.values[0] if hasattr(positive, "values") else positive[0]
    return ctx, clip, model, positive


def _sample(ctx: Any, model: Any, positive: Any) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 16, 6, 8)}
    out = S.ksampler(model, 7, 2, 1.0, "euler", "simple", positive, positive, latent, context=ctx)
    out = out.values[0] if hasattr(out, "values") else out[0]
    return out["samples"]  # type: ignore[no-any-return]


def test_flux_runs_partially_loaded_after_offloading_the_text_encoders(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    unlimited = ModelManager(DeviceInfo.cpu())
    ctx, clip, model, positive = _encode(folders, unlimited)
    reference = _sample(ctx, model, positive)
    transformer = unlimited.handle_for(model.patcher.module).size_bytes  # type: ignore[union-attr]
    text = unlimited.handle_for(clip.patcher.module).size_bytes  # type: ignore[union-attr]
    budget = (transformer * 2) // 3
    assert text < budget < transformer  # the text encoders fit; the transformer does not, even alone

    manager = ModelManager(DeviceInfo.cpu(), device_budget_bytes=budget)
    ctx, clip, model, positive = _encode(folders, manager)
    text_encoders = manager.handle_for(clip.patcher.module)
    flux_model = manager.handle_for(model.patcher.module)
    assert text_encoders is not None and flux_model is not None
    assert text_encoders.location is Location.DEVICE  # CLIP-L + T5 ran on the (accounted) device
    samples = _sample(ctx, model, positive)
    # Only the transformer was placed since: it made room by offloading the text encoders, then streamed.
    assert text_encoders.location is not Location.DEVICE
    assert flux_model.location is Location.PARTIAL and flux_model.streamed_units
    assert manager.peak_device_bytes <= budget
    torch.testing.assert_close(samples, reference, rtol=0, atol=1e-6)
