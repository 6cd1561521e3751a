"""Each part of a checkpoint is read in the storage dtype of its own role (issue 12 §5): a bf16 or fp8
UNet must not round the VAE's or the text encoder's weights on the way in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.diffusion.checkpoints.io import read_state_dict
from engine.diffusion.checkpoints.loader import load_checkpoint
from engine.handles import load_checkpoint_handles
from engine.memory.devices import DeviceInfo, MemoryOptions
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint

VAE_FILE_PREFIX = "first_stage_model."
TEXT_FILE_PREFIX = "cond_stage_model.transformer.text_model."
TEXT_MODULE_PREFIX = "towers.clip_l."


def _assert_bit_identical_to_file(
    module: torch.nn.Module, file_sd: dict, module_prefix: str, file_prefix: str
):
    compared = 0
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            continue
        source = file_sd[file_prefix + key.removeprefix(module_prefix)]
        assert value.dtype == source.dtype == torch.float32, key
        assert torch.equal(value.reshape(source.shape), source), key
        compared += 1
    assert compared > 10


def _check_unet(unet: torch.nn.Module, file_sd: dict, dtype: torch.dtype) -> None:
    for key, value in unet.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == dtype, key
            source = file_sd["model.diffusion_model." + key]
            assert torch.equal(value.reshape(source.shape), source.to(dtype)), key


@pytest.fixture
def fp32_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1", seed=5)
    file_sd = read_state_dict(path)
    assert all(v.dtype == torch.float32 for v in file_sd.values() if v.is_floating_point())
    return path, file_sd


UNET_DTYPES = [torch.bfloat16] + [getattr(torch, n) for n in ("float8_e4m3fn",) if hasattr(torch, n)]


@pytest.mark.parametrize("unet_dtype", UNET_DTYPES, ids=str)
def test_low_precision_unet_leaves_vae_and_text_encoder_as_in_the_file(fp32_checkpoint, unet_dtype) -> None:
    path, file_sd = fp32_checkpoint
    # On the CPU the VAE and text encoder default to fp32; only the UNet is asked for in bf16 / fp8.
    manager = ModelManager(DeviceInfo.cpu(MemoryOptions(unet_dtype=unet_dtype)))
    model, clip, vae = load_checkpoint_handles(path, manager=manager)
    assert clip is not None and vae is not None
    _check_unet(model.unet, file_sd, unet_dtype)
    _assert_bit_identical_to_file(vae.module, file_sd, "", VAE_FILE_PREFIX)
    _assert_bit_identical_to_file(clip.encoder, file_sd, TEXT_MODULE_PREFIX, TEXT_FILE_PREFIX)


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="this torch has no float8 dtypes")
def test_fp8_unet_reads_only_the_unet_in_fp8(fp32_checkpoint) -> None:
    path, file_sd = fp32_checkpoint
    dtypes = {"unet": torch.float8_e4m3fn, "vae": torch.float32, "text": torch.float32}
    ck = load_checkpoint(path, dtypes=dtypes)
    _check_unet(ck.unet, file_sd, torch.float8_e4m3fn)
    _assert_bit_identical_to_file(ck.vae, file_sd, "", VAE_FILE_PREFIX)
    _assert_bit_identical_to_file(ck.text_encoder, file_sd, TEXT_MODULE_PREFIX, TEXT_FILE_PREFIX)


def test_diffusers_folder_reads_each_component_in_its_dtype(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "sd1", "sd1", seed=6, layout="diffusers")
    reference = load_checkpoint(folder)  # the file's own fp32
    ck = load_checkpoint(folder, dtypes={"unet": torch.bfloat16, "vae": torch.float32, "text": torch.float32})
    assert {v.dtype for v in ck.unet.state_dict().values() if v.is_floating_point()} == {torch.bfloat16}
    for built, ref in ((ck.vae, reference.vae), (ck.text_encoder, reference.text_encoder)):
        for key, value in ref.state_dict().items():
            assert torch.equal(built.state_dict()[key], value), key
