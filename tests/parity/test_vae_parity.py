"""Parity: our AutoencoderKL vs diffusers' AutoencoderKL given the same (tiny, random) weights.

The reference is loaded through diffusers' own ``convert_ldm_vae_checkpoint`` of a single-file
checkpoint in the original layout (``first_stage_model.*``), so our key names are checked too.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file, save_file

from engine.diffusion.checkpoints.detect_vae import vae_config_from_state_dict
from engine.diffusion.models.vae import AutoencoderKL, VAEConfig
from tests.factories.checkpoints import diffusers_vae_config

pytestmark = [pytest.mark.parity, pytest.mark.slow]


PREFIX = "first_stage_model."


def randomize_(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:  # biases around 0, norm scales around 1
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    # Three levels so the decoder's up.N ordering (reversed relative to diffusers) is exercised.
    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, scaling_factor=0.13025)
    ours = AutoencoderKL(cfg).eval()
    randomize_(ours, 0)
    path = tmp_path_factory.mktemp("vae") / "model.safetensors"
    save_file({PREFIX + k: v.contiguous() for k, v in ours.state_dict().items()}, str(path))
    checkpoint = load_file(str(path))
    assert (
        vae_config_from_state_dict(
            {k[len(PREFIX) :]: v for k, v in checkpoint.items()}, scaling_factor=0.13025
        )
        == cfg
    )
    config = {k: v for k, v in diffusers_vae_config(cfg).items() if not k.startswith("_")}
    converted = convert_ldm_vae_checkpoint(checkpoint, config)
    ref = diffusers.AutoencoderKL(**config).eval()
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours, ref, checkpoint


def test_vae_encode_matches_diffusers(pair) -> None:
    ours, ref, _ = pair
    x = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a = ours.encode(x)
        # Raw latents on both sides: diffusers' pipelines scale outside the VAE, as ComfyUI's sampler does.
        b = ref.encode(x).latent_dist.mean
    assert a.shape == (2, 4, 8, 10)
    assert b.abs().max() > 0.05
    assert (a - b).abs().max().item() <= 1e-4 / ref.config.scaling_factor


def test_vae_decode_matches_diffusers(pair) -> None:
    ours, ref, _ = pair
    z = torch.randn(2, 4, 8, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ours.decode(z)
        b = ref.decode(z).sample
    assert a.shape == (2, 3, 32, 40)
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() <= 1e-4


def test_vae_loads_linear_style_mid_attention_weights(pair) -> None:
    ours, _, checkpoint = pair
    # Some converted checkpoints store the 1x1-conv attention projections as (out, in) matrices.
    sd = {k[len(PREFIX) :]: v for k, v in checkpoint.items()}
    flat = {k: (v[:, :, 0, 0] if ".mid.attn_1." in k and v.ndim == 4 else v) for k, v in sd.items()}
    assert flat["decoder.mid.attn_1.q.weight"].ndim == 2
    other = AutoencoderKL(ours.config)
    other.load_state_dict(flat)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(other.decode(z), ours.decode(z))
