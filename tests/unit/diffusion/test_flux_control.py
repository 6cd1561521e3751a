"""FLUX.1 Canny / Depth: the dev-model files and BFL's control LoRAs (``flux1-depth-dev-lora``).

- A Canny / Depth dev file (img_in of (16 + 16) * 4 features) is loaded by UNETLoader; its MODEL concatenates
  the InstructPixToPixConditioning latent (in model space) and nothing else, and that latent steers it.
- ``GrowPatch`` / ``SetPatch`` (ComfyUI's "reshape_weight" and "set_weight"), checked on hand-worked numbers
  and through the patcher, which restores the original (narrower) tensor bit for bit.
- A BFL control LoRA on plain FLUX.1 dev: img_in grows to take the control latent, the QK-norm scales are
  replaced by the file's, the MODEL concatenates the control latent (as ComfyUI's Flux reads img_in's
  patched width), the control image changes the prediction, and the base MODEL is untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from engine.diffusion.checkpoints.flow_detect import detect_flow_file
from engine.diffusion.models import flux
from engine.diffusion.models.latent_formats import FLUX
from engine.diffusion.sampling.flux_inputs import FluxConcat
from engine.folders import Folders
from engine.handles.adapters import apply_lora
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from engine.memory.patcher import ModelPatcher
from engine.memory.weight_patches import GrowPatch, LoRAPatch, SetPatch, apply_patch
from tests.factories.control_files import bfl_control_lora_state_dict
from tests.factories.flow_checkpoints import write_flow_file
from tests.unit.nodes.node_support import builtin, node_context

CONTROL = flux.TINY.replace(in_channels=32)


def _unet(tmp_path: Path, name: str, config: flux.FluxConfig, seed: int) -> Any:
    sd = write_flow_file(
        tmp_path / "models" / "diffusion_models" / name,
        "flux",
        config=config,
        layout="diffusion_model",
        seed=seed,
    )
    ctx = node_context(
        folders=Folders.create(tmp_path), manager=ModelManager(select_device(MemoryOptions()))
    )[0]
    (model,) = builtin("loaders").unet_loader(name, "default", context=ctx)
    return model, sd


def _predict(model: Any, control_latent: torch.Tensor | None) -> torch.Tensor:
    """One denoiser call of the MODEL with an InstructPixToPixConditioning-style entry."""
    dm = model.diffusion_model()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 4, 6, generator=gen)
    cond: dict[str, Any] = {"pooled_output": torch.randn(1, 24, generator=gen), "guidance": 10.0}
    if control_latent is not None:
        cond["concat_latent_image"] = control_latent
    cc = dm.concat_cond(x, latent_image=None, denoise_mask=None, cond=cond)
    y = dm.encode_adm(cond, 48, 32)
    ctx = torch.randn(1, 3, 40, generator=gen)
    with model.use(), torch.no_grad():
        return dm.apply(x, torch.tensor([0.8]), context=ctx, y=y, c_concat=cc)  # type: ignore[no-any-return]


def test_canny_depth_model_concatenates_the_control_latent(tmp_path: Path) -> None:
    model, sd = _unet(tmp_path, "flux1-canny-dev.safetensors", CONTROL, seed=7)
    assert detect_flow_file(sd).variant == "flux_variant"
    dm = model.diffusion_model()
    assert isinstance(dm.variant, FluxConcat)
    gen = torch.Generator().manual_seed(0)
    x, image = torch.randn(1, 16, 4, 6, generator=gen), torch.randn(1, 16, 4, 6, generator=gen)
    cc = dm.concat_cond(x, latent_image=None, denoise_mask=None, cond={"concat_latent_image": image})
    torch.testing.assert_close(cc, FLUX.process_in(image))  # the image latent only: no mask channels
    a, b = _predict(model, image), _predict(model, torch.randn(1, 16, 4, 6, generator=gen))
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3


def test_grow_and_set_patches_on_hand_worked_numbers() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    lora = LoRAPatch(up=torch.tensor([[1.0], [2.0]]), down=torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0]]))
    grown = apply_patch(w, GrowPatch(lora, (2, 5)), 0.5)
    torch.testing.assert_close(grown, torch.tensor([[1.5, 2.0, 3.0, 0.0, 0.5], [5.0, 5.0, 6.0, 0.0, 1.0]]))
    value = torch.tensor([7.0, 8.0])
    assert torch.equal(apply_patch(torch.tensor([1.0, 1.0]), SetPatch(value), 0.3), value)  # strength ignored
    with pytest.raises(ValueError, match="cannot grow"):
        GrowPatch(lora, (1, 5)).grow(w)


def test_patcher_widens_a_weight_and_restores_the_original_tensor() -> None:
    layer = nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    storage = layer.weight.data_ptr()
    lora = LoRAPatch(up=torch.ones(2, 1), down=torch.ones(1, 5))
    patcher = ModelPatcher(layer)
    patcher.add_patches({"weight": GrowPatch(lora, (2, 5))})
    patcher.apply()
    assert layer.weight.shape == (2, 5)
    torch.testing.assert_close(layer.weight[:, :3], before + 1.0)
    torch.testing.assert_close(layer.weight[:, 3:], torch.ones(2, 2))
    assert layer(torch.ones(1, 5)).shape == (1, 2)
    patcher.remove()
    assert layer.weight.data_ptr() == storage and torch.equal(layer.weight, before)


def test_bfl_control_lora_turns_flux_dev_into_a_control_model(tmp_path: Path) -> None:
    base, _ = _unet(tmp_path, "flux1-dev.safetensors", flux.TINY, seed=2)
    lora = bfl_control_lora_state_dict(flux.TINY, seed=5)
    path = tmp_path / "flux1-depth-dev-lora.safetensors"
    save_file(lora, str(path))
    controlled, _, report = apply_lora(path, base, None, 1.0, 0.0)
    assert report.unmatched == []
    patches = controlled.patcher.patches
    (grow,) = [p for _, p, _ in patches["model.img_in.weight"]]
    assert isinstance(grow, GrowPatch) and grow.shape == (32, 128)
    assert isinstance(patches["model.single_blocks.0.norm.key_norm.scale"][0][1], SetPatch)
    assert isinstance(controlled.diffusion_model().variant, FluxConcat)
    assert base.diffusion_model().variant is None  # the base MODEL is unchanged

    transformer = controlled.transformer
    plain_w = transformer.img_in.weight.detach().clone()
    delta = lora["img_in.lora_B.weight"] @ lora["img_in.lora_A.weight"]  # no alpha: scale 1
    with controlled.use():
        w = transformer.img_in.weight.detach()
        torch.testing.assert_close(w[:, :64], plain_w + delta[:, :64])
        torch.testing.assert_close(w[:, 64:], delta[:, 64:])
        torch.testing.assert_close(
            transformer.double_blocks[0].txt_attn.norm.query_norm.scale.detach(),
            lora["double_blocks.0.txt_attn.norm.query_norm.scale"],
        )
    gen = torch.Generator().manual_seed(1)
    a = _predict(controlled, torch.randn(1, 16, 4, 6, generator=gen))
    b = _predict(controlled, torch.randn(1, 16, 4, 6, generator=gen))
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3
    plain = _predict(base, None)  # the base model runs again with its own 64-wide img_in
    assert transformer.img_in.weight.shape == (32, 64) and torch.equal(transformer.img_in.weight, plain_w)
    assert plain.shape == a.shape
