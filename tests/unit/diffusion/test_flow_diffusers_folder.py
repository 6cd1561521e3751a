"""SD3/SD3.5 and FLUX.1 diffusers folders: tiny models saved with diffusers' and transformers' own
``save_pretrained`` load through our folder loader and compute what those models compute (transformer,
text towers, VAE); DiffusersLoader gives working MODEL / CLIP / VAE; a missing part is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from engine.diffusion.checkpoints import flow_text
from engine.diffusion.checkpoints.flow_diffusers import is_flow_diffusers_folder, load_flow_diffusers_folder
from engine.diffusion.checkpoints.io import CheckpointError
from engine.diffusion.models import flux, mmdit
from engine.folders import Folders
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.diffusers_flow import flux_transformer_kwargs, sd3_transformer_kwargs
from tests.factories.random_weights import randomize_
from tests.parity.test_flux_parity import pack, unpack
from tests.unit.diffusion.t5_fixtures import train_spiece
from tests.unit.nodes.node_support import builtin, node_context

T5_VOCAB = 160  # the trained SentencePiece vocabulary (50) + T5's 100 extra ids, rounded up


def _t5(d_model: int, seed: int) -> T5EncoderModel:
    config = T5Config(vocab_size=T5_VOCAB, d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=d_model // 8, feed_forward_proj="gated-gelu", dropout_rate=0.0)  # fmt: skip
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def _clip(width: int, projection: int | None, act: str, seed: int) -> Any:
    config = CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                            num_attention_heads=1, projection_dim=projection or width, hidden_act=act)  # fmt: skip
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection is not None else CLIPTextModel
    model = cls(config).eval()
    randomize_(model, seed, unit=("embedding",))
    return model


def _vae(family: str) -> diffusers.AutoencoderKL:
    preset = (1.5305, 0.0609) if family == "sd3" else (0.3611, 0.1159)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=16, norm_num_groups=32,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=preset[0], shift_factor=preset[1],
    ).eval()  # fmt: skip
    randomize_(vae, 5)
    return vae


def write_folder(root: Path, family: str, cfg: Any, *, shard: bool = False) -> dict[str, Any]:
    """A diffusers pipeline folder of tiny random models; returns the reference models by subfolder."""
    if family == "sd3":
        transformer: Any = diffusers.SD3Transformer2DModel(**sd3_transformer_kwargs(cfg))
        randomize_(transformer, 0, unit=("pos_embed",))
        parts = {"text_encoder": _clip(8, 8, "quick_gelu", 1), "text_encoder_2": _clip(16, 16, "gelu", 2),
                 "text_encoder_3": _t5(cfg.context_in_dim, 3)}  # fmt: skip
        tokenizer, pipeline = "tokenizer_3", "StableDiffusion3Pipeline"
    else:
        transformer = diffusers.FluxTransformer2DModel(**flux_transformer_kwargs(cfg))
        randomize_(transformer, 0)
        parts = {"text_encoder": _clip(cfg.vec_in_dim, None, "quick_gelu", 1),
                 "text_encoder_2": _t5(cfg.context_in_dim, 3)}  # fmt: skip
        tokenizer, pipeline = "tokenizer_2", "FluxPipeline"
    parts = {"transformer": transformer.eval(), "vae": _vae(family), **parts}
    for sub, model in parts.items():
        model.save_pretrained(
            root / sub, **({"max_shard_size": "20KB"} if shard and sub == "transformer" else {})
        )
    train_spiece(root / tokenizer / "spiece.model")
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return parts


def _sd3_inputs(cfg: mmdit.MMDiTConfig) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 8, 12, generator=gen)
    return (
        x,
        torch.tensor([999.0, 312.5]),
        torch.randn(2, 7, cfg.context_in_dim, generator=gen),
        torch.randn(2, cfg.adm_in_channels, generator=gen),
    )


@pytest.mark.parametrize("cfg", [mmdit.TINY, mmdit.TINY_X], ids=["sd3", "mmdit-x"])
def test_sd3_folder_transformer_computes_like_diffusers(cfg: mmdit.MMDiTConfig, tmp_path: Path) -> None:
    ref = write_folder(tmp_path, "sd3", cfg)["transformer"]
    ours = load_flow_diffusers_folder(tmp_path, components=("unet",)).transformer
    assert ours.config == cfg
    x, t, context, y = _sd3_inputs(cfg)
    with torch.no_grad():
        a = ours(x, t, context=context, y=y)
        b = ref(hidden_states=x, encoder_hidden_states=context, pooled_projections=y, timestep=t).sample
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("cfg", [flux.TINY, flux.TINY_SCHNELL], ids=["dev", "schnell"])
def test_sharded_flux_folder_transformer_computes_like_diffusers(
    cfg: flux.FluxConfig, tmp_path: Path
) -> None:
    ref = write_folder(tmp_path, "flux", cfg, shard=True)["transformer"]
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    ours = load_flow_diffusers_folder(tmp_path, components=("unet",)).transformer
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 8, 12, generator=gen)
    context = torch.randn(2, 5, cfg.context_in_dim, generator=gen)
    y = torch.randn(2, cfg.vec_in_dim, generator=gen)
    t = torch.tensor([1.0, 0.35])
    guidance = torch.tensor([3.5, 2.0]) if cfg.guidance_embed else None
    tokens, ids = pack(x)  # diffusers' pipeline convention
    with torch.no_grad():
        a = ours(x, t, context, y, guidance=guidance)
        out = ref(hidden_states=tokens, encoder_hidden_states=context, pooled_projections=y, timestep=t,
                  img_ids=ids, txt_ids=torch.zeros(5, 3), guidance=guidance).sample  # fmt: skip
    b = unpack(out, cfg.out_channels, 8, 12)
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_folder_text_towers_and_vae_compute_like_the_saved_models(family: str, tmp_path: Path) -> None:
    cfg = mmdit.TINY if family == "sd3" else flux.TINY
    parts = write_folder(tmp_path, family, cfg)
    ck = load_flow_diffusers_folder(tmp_path, dtype=torch.float32)
    assert ck.spec.family == family
    towers = flow_text.build_towers(ck.text_state_dicts, dtype=torch.float32, path=str(tmp_path))
    kinds = {"text_encoder": "clip_l", "text_encoder_2": "clip_g" if family == "sd3" else "t5xxl",
             "text_encoder_3": "t5xxl"}  # fmt: skip
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407, 49407]])
    for sub, kind in kinds.items():
        if sub not in parts:
            continue
        with torch.no_grad():
            if kind == "t5xxl":
                t5_ids = ids % 150
                want = parts[sub](input_ids=t5_ids).last_hidden_state
                got = towers[kind](t5_ids)
                got = got[0] if isinstance(got, tuple) else got
            else:
                want = parts[sub](input_ids=ids).last_hidden_state
                got = towers[kind](ids).last_hidden_state
        assert want.abs().max() > 0.1
        assert (got - want).abs().max().item() <= 1e-4, sub
    z = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ck.vae.decode(z) - parts["vae"].decode(z).sample).abs().max().item() <= 1e-4
    assert ck.vae.config.scaling_factor == parts["vae"].config.scaling_factor


@pytest.mark.parametrize("missing", ["text_encoder_3", "vae", "transformer"])
def test_folder_missing_a_part_is_reported_by_its_subfolder(missing: str, tmp_path: Path) -> None:
    write_folder(tmp_path, "sd3", mmdit.TINY)
    shutil.rmtree(tmp_path / missing)
    with pytest.raises(CheckpointError, match=f"{missing}/"):
        load_flow_diffusers_folder(tmp_path)


def test_diffusers_loader_gives_working_sd3_and_flux_handles(tmp_path: Path) -> None:
    root = tmp_path / "models" / "diffusers"
    write_folder(root / "sd3-tiny", "sd3", mmdit.TINY)
    write_folder(root / "flux-tiny", "flux", flux.TINY)
    assert is_flow_diffusers_folder(root / "sd3-tiny")
    ctx = node_context(
        folders=Folders.create(tmp_path), manager=ModelManager(select_device(MemoryOptions()))
    )[0]
    loaders, cond = builtin("adapter_loaders"), builtin("conditioning")
    for name, family in (("sd3-tiny", "sd3"), ("flux-tiny", "flux")):
        model, clip, vae = loaders.diffusers_loader(model_path=f"{name}/model_index.json", context=ctx)
        assert model.family == family
        ((tokens, extra),) = cond.clip_text_encode(text="a photo of a cat", clip=clip)[0]
        assert tokens.shape[-1] == (
            mmdit.TINY.context_in_dim if family == "sd3" else flux.TINY.context_in_dim
        )
        assert torch.isfinite(tokens).all() and tokens.abs().max() > 0
        assert extra["pooled_output"].shape[-1] == (24 if family == "sd3" else flux.TINY.vec_in_dim)
        assert vae.downscale == 2  # the tiny VAE's two levels
        assert model.vae_downscale == 2
