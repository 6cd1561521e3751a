"""Loading tiny checkpoints end to end: single files, .ckpt, dtypes, diffusers folders, standalone VAEs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.diffusion.checkpoints import diffusers_layout as dl
from engine.diffusion.checkpoints.detect import ModelFamily
from engine.diffusion.checkpoints.io import CheckpointError
from engine.diffusion.checkpoints.loader import load_checkpoint, load_diffusers_folder, load_vae
from tests.factories.checkpoints import write_tiny_checkpoint

pytestmark = pytest.mark.slow

F = ModelFamily


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "sd1": write_tiny_checkpoint(root / "sd1.safetensors", F.SD1, seed=1),
        "sd1_fp16": write_tiny_checkpoint(root / "sd1_fp16.safetensors", F.SD1, seed=1, dtype=torch.float16),
        "sd1_ckpt": write_tiny_checkpoint(root / "sd1.ckpt", F.SD1, seed=1),
        "sdxl": write_tiny_checkpoint(root / "sdxl.safetensors", F.SDXL, seed=2),
    }


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.state_dict())


def test_ckpt_end_to_end_sd1(files: dict[str, Path]) -> None:
    ck = load_checkpoint(files["sd1"])
    assert ck.spec.family is F.SD1
    cond, pooled = ck.text_encoder.encode("a photo of a cat")
    assert cond.shape == (1, 77, 32) and pooled is None
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = ck.unet(x, torch.tensor([999.0, 1.0]), context=cond.expand(2, -1, -1))
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    img = ck.vae.decode(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)))
    assert img.shape == (1, 3, 8, 8) and torch.isfinite(img).all()
    # The weights are exactly the file's.
    raw = load_file(str(files["sd1"]))
    assert torch.equal(ck.unet.state_dict()["out.2.weight"], raw["model.diffusion_model.out.2.weight"])
    assert torch.equal(
        ck.vae.state_dict()["decoder.mid.attn_1.q.weight"],
        raw["first_stage_model.decoder.mid.attn_1.q.weight"],
    )


def test_ckpt_end_to_end_sdxl(files: dict[str, Path]) -> None:
    from engine.diffusion.models.sdxl_conditioning import sdxl_adm

    ck = load_checkpoint(files["sdxl"])
    assert ck.spec.family is F.SDXL
    cond, pooled = ck.text_encoder.encode("a photo of a cat")
    assert cond.shape == (1, 77, 64) and pooled is not None and pooled.shape == (1, 32)
    y = sdxl_adm(pooled, width=64, height=64, crop_w=0, crop_h=0, target_width=64, target_height=64)
    out = ck.unet(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), context=cond, y=y)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    assert ck.vae.config.scaling_factor == 0.13025


@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16])
def test_ckpt_fp16_file_into_other_dtypes(files: dict[str, Path], target: torch.dtype) -> None:
    ck = load_checkpoint(files["sd1_fp16"], dtype=target)
    raw = load_file(str(files["sd1_fp16"]))
    for module, prefix in ((ck.unet, "model.diffusion_model."), (ck.vae, "first_stage_model.")):
        for k, v in module.state_dict().items():
            assert v.dtype == target, k
            assert torch.equal(v, raw[prefix + k].to(target)), k
    assert all(p.dtype == target for p in ck.text_encoder.parameters())


def test_ckpt_fp32_file_into_fp16_and_file_dtype_default(files: dict[str, Path]) -> None:
    half = load_checkpoint(files["sd1"], dtype=torch.float16, components=("unet",))
    full = load_checkpoint(files["sd1"], components=("unet",))
    assert half.vae is None and half.text_encoder is None
    for k, v in half.unet.state_dict().items():
        assert v.dtype == torch.float16
        assert torch.equal(v, full.unet.state_dict()[k].half())
    assert all(v.dtype == torch.float32 for v in full.unet.state_dict().values())


def test_ckpt_pickle_checkpoint_loads_same_weights(files: dict[str, Path]) -> None:
    a = load_checkpoint(files["sd1"], components=("unet", "vae"))
    b = load_checkpoint(files["sd1_ckpt"], components=("unet", "vae"))
    for m1, m2 in ((a.unet, b.unet), (a.vae, b.vae)):
        s1, s2 = _params(m1), _params(m2)
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.parametrize("family", list(F))
def test_ckpt_diffusers_folder_matches_single_file(tmp_path: Path, family: ModelFamily) -> None:
    folder = write_tiny_checkpoint(tmp_path / "pipe", family, seed=5, layout="diffusers")
    single = write_tiny_checkpoint(tmp_path / "single.safetensors", family, seed=5)
    assert (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file()
    a = load_diffusers_folder(folder)
    b = load_checkpoint(single)
    assert a.spec.family is b.spec.family is family
    # The scheduler config is the prediction-type evidence for diffusers folders.
    assert a.spec.prediction_source == "metadata"
    for m1, m2 in ((a.unet, b.unet), (a.vae, b.vae), (a.text_encoder, b.text_encoder)):
        s1, s2 = _params(m1), _params(m2)
        assert s1.keys() == s2.keys()
        # diffusers' SD2 text encoder is a CLIPTextModel without the (unused) OpenCLIP projection.
        skip = {"towers.clip_h.text_projection.weight"} if family in (F.SD2, F.SD2_V) else set()
        differ = [k for k in s1 if k not in skip and not torch.equal(s1[k], s2[k])]
        assert differ == []


@pytest.mark.parity
def test_ckpt_diffusers_folder_is_readable_by_diffusers(tmp_path: Path) -> None:
    import diffusers

    folder = write_tiny_checkpoint(tmp_path / "pipe", F.SD1, seed=6, layout="diffusers")
    ref = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    ours = load_checkpoint(
        write_tiny_checkpoint(tmp_path / "s.safetensors", F.SD1, seed=6), components=("unet",)
    ).unet
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g)
    t = torch.tensor([321.0])
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=ctx).sample
        got = ours(x, t, context=ctx)
    assert (got - want).abs().max() < 1e-4


def test_ckpt_load_vae_layouts(tmp_path: Path, files: dict[str, Path]) -> None:
    raw = load_file(str(files["sd1"]))
    vae_sd = dl.strip_prefix(raw, "first_stage_model.")
    save_file(dl.add_prefix(vae_sd, "first_stage_model."), str(tmp_path / "prefixed.safetensors"))
    save_file(vae_sd, str(tmp_path / "bare.safetensors"))
    save_file(dl.vae_original_to_diffusers(vae_sd), str(tmp_path / "diffusers.safetensors"))
    torch.save({"state_dict": vae_sd}, tmp_path / "bare.pt")
    loaded = [
        load_vae(tmp_path / n)
        for n in ("prefixed.safetensors", "bare.safetensors", "diffusers.safetensors", "bare.pt")
    ]
    want = loaded[0].state_dict()
    assert torch.equal(want["decoder.mid.attn_1.k.weight"], vae_sd["decoder.mid.attn_1.k.weight"])
    for vae in loaded[1:]:
        got = vae.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert loaded[0].config.scaling_factor == 0.18215
    save_file(vae_sd, str(tmp_path / "sdxl_vae.safetensors"))
    assert load_vae(tmp_path / "sdxl_vae.safetensors").config.scaling_factor == 0.13025


def test_ckpt_strict_key_check(tmp_path: Path, files: dict[str, Path]) -> None:
    raw = load_file(str(files["sd1"]))
    del raw["model.diffusion_model.output_blocks.1.0.emb_layers.1.bias"]
    raw["model.diffusion_model.output_blocks.1.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "damaged.safetensors"
    save_file(raw, str(path))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, components=("unet",))
    msg = str(err.value)
    assert "damaged.safetensors" in msg and "UNet weights do not match" in msg
    assert "1 missing: model.diffusion_model.output_blocks.1.0.emb_layers.1.bias" in msg
    assert "1 unexpected: model.diffusion_model.output_blocks.1.0.extra.weight" in msg


def test_ckpt_not_a_diffusers_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a diffusers model folder"):
        load_diffusers_folder(tmp_path)
